//! Running `nft`, `iptables-save`, `iptables-restore` and friends.
//!
//! We run them with `std::process::Command` on the *calling thread*, on purpose: a network
//! namespace is per thread, and a child inherits the namespace of the thread that forked it.
//! Handing the call to `spawn_blocking` would run the tool in whatever namespace the pool
//! thread is in. The tools finish in milliseconds, so blocking a runtime worker briefly at
//! setup/resync time (every 60 s) is acceptable.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{FirewallBackend, NodeError};

/// Runs `program args…`, feeding `stdin` if given, and returns stdout.
/// Arguments and stdin are generated from typed values only (addresses, ports, our own
/// fixed names), never from free-form configuration text.
pub(crate) fn run(
    backend: FirewallBackend,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NodeError> {
    let fail = |detail: String| NodeError::Firewall { backend, detail };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(input) = stdin {
        // Take the pipe so it is closed (EOF) once written.
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes()).map_err(|e| fail(format!("writing to {program}: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("waiting for {program}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{program} {} exited with {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin.map(|s| format!("\ninput was:\n{s}")).unwrap_or_default(),
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
