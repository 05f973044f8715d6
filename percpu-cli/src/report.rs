//! `percpu info`: what rseq this process and its threads get.

use std::fmt::Write as _;

use rseq_sys::Owner;

/// Everything `percpu info` reports.
#[derive(Debug, Clone)]
pub struct Report {
    pub owner: Owner,
    /// Where the area is one another object shares with every copy of rseq-sys (see
    /// `rseq_sys::shared`): that object's path and how many copies use it on this thread.
    pub shared_area: Option<(String, u32)>,
    pub reason: Option<String>,
    pub feature_size: u32,
    pub feature_align: u32,
    pub glibc_rseq_size: u32,
    pub kernel_size: u32,
    pub thread_kernel_size: u32,
    pub node_id: Option<u32>,
    pub mm_cid: Option<u32>,
    pub cpu: Option<u32>,
    pub possible_cpus: u32,
    pub arch_sequences: bool,
    pub mode: percpu::Mode,
}

impl Report {
    /// Reads the report for the calling thread and for a freshly spawned one.
    pub fn collect() -> Report {
        let status = rseq_sys::status();
        let thread_kernel_size = std::thread::spawn(rseq_sys::kernel_size)
            .join()
            .unwrap_or(0);
        Report {
            owner: status.owner,
            shared_area: rseq_sys::shared::current_use()
                .map(|u| (u.object.to_string_lossy().into_owned(), u.users)),
            reason: status.reason.map(|r| r.to_string()),
            feature_size: rseq_sys::feature_size(),
            feature_align: rseq_sys::feature_align(),
            glibc_rseq_size: rseq_sys::glibc_rseq_size(),
            kernel_size: status.kernel_size,
            thread_kernel_size,
            node_id: rseq_sys::current_node(),
            mm_cid: rseq_sys::current_mm_cid(),
            cpu: rseq_sys::current_cpu(),
            possible_cpus: rseq_sys::possible_cpus(),
            arch_sequences: rseq_sys::HAS_SEQUENCES,
            mode: percpu::mode(),
        }
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let supported = match (&self.reason, self.kernel_size) {
            (None, n) if n > 0 => format!("yes (kernel_size={n})"),
            (Some(why), _) => format!("no ({why})"),
            (None, _) => "no (registration in progress)".to_string(),
        };
        let opt = |v: Option<u32>| v.map_or_else(|| "not filled".to_string(), |v| v.to_string());
        let _ = writeln!(s, "rseq report");
        let _ = writeln!(s, "  extensible struct rseq supported: {supported}");
        let owner = match (self.owner, &self.shared_area) {
            (Owner::Glibc, _) => format!("glibc (__rseq_size={})", self.glibc_rseq_size),
            (Owner::Own, None) => "own (percpu registered the area)".to_string(),
            (Owner::Own, Some((object, users))) => format!(
                "own (the area {object} shares; {users} copies of rseq-sys use it on this thread)"
            ),
            (Owner::None, _) => "none".to_string(),
        };
        let _ = writeln!(s, "  registration owner:  {owner}");
        let _ = writeln!(
            s,
            "  kernel feature size: {} bytes, alignment {}",
            self.feature_size, self.feature_align
        );
        let _ = writeln!(
            s,
            "  kernel_size:         main thread {}, new thread {}",
            self.kernel_size, self.thread_kernel_size
        );
        let _ = writeln!(
            s,
            "  cpu:                 {} of {} possible",
            opt(self.cpu),
            self.possible_cpus
        );
        let _ = writeln!(s, "  node_id:             {}", opt(self.node_id));
        let _ = writeln!(s, "  mm_cid:              {}", opt(self.mm_cid));
        let _ = writeln!(
            s,
            "  commit sequences:    {}",
            if self.arch_sequences {
                std::env::consts::ARCH
            } else {
                "none for this architecture (atomics only)"
            }
        );
        let _ = writeln!(s, "  per-CPU path:        {}", self.mode);
        s
    }

    /// One JSON object with exactly the documented keys.
    pub fn to_json(&self) -> String {
        let reason = self
            .reason
            .as_deref()
            .map_or_else(|| "null".to_string(), json_string);
        let cpu = self
            .cpu
            .map_or_else(|| "null".to_string(), |c| c.to_string());
        let shared_area = self.shared_area.as_ref().map_or_else(
            || "null".to_string(),
            |(object, users)| format!("{{\"object\":{},\"users\":{users}}}", json_string(object)),
        );
        format!(
            "{{\"owner\":\"{}\",\"shared_area\":{},\"reason\":{},\"feature_size\":{},\"feature_align\":{},\
             \"kernel_size\":{},\"thread_kernel_size\":{},\"node_id\":{},\"mm_cid\":{},\
             \"cpu\":{},\"possible_cpus\":{},\"arch_sequences\":{}}}",
            self.owner.as_str(),
            shared_area,
            reason,
            self.feature_size,
            self.feature_align,
            self.kernel_size,
            self.thread_kernel_size,
            self.node_id.is_some(),
            self.mm_cid.is_some(),
            cpu,
            self.possible_cpus,
            self.arch_sequences,
        )
    }
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::{Report, json_string};

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    /// A registration shared through another object (which only a process with such an object
    /// preloaded has; percpu-malloc's preload tests check that rseq-sys reports one) names it.
    #[test]
    fn a_shared_area_is_named_with_its_users() {
        let mut report = Report::collect();
        report.owner = rseq_sys::Owner::Own;
        report.shared_area = Some(("/lib/lib\"x\".so".to_string(), 2));
        let text = report.to_text();
        assert!(
            text.contains(
                "registration owner:  own (the area /lib/lib\"x\".so shares; 2 copies of rseq-sys \
                 use it on this thread)"
            ),
            "{text}"
        );
        let json = report.to_json();
        assert!(
            json.contains(r#""shared_area":{"object":"/lib/lib\"x\".so","users":2}"#),
            "{json}"
        );
        report.shared_area = None;
        assert!(report.to_json().contains(r#""shared_area":null"#));
        assert!(
            report
                .to_text()
                .contains("own (percpu registered the area)")
        );
    }
}
