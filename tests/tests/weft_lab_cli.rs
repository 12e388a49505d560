//! `weft-lab up | status | down` as a user runs them: the lab outlives the
//! `up` process and is removed by a later `down`.
//!
//! Needs the binaries: `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weft_tests::{bin_path, cleanup, require_root};

struct CliLab {
    dir: PathBuf,
    prefix: String,
    down: bool,
}

impl CliLab {
    fn new() -> CliLab {
        require_root();
        // A prefix of the `wt<pid>x<n>` form, so a crashed run is swept.
        let prefix = format!("wt{}x9000", std::process::id());
        CliLab {
            dir: Path::new(cleanup::LAB_ROOT).join(&prefix),
            prefix,
            down: false,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        // Make sure weft-agent/weftctl are there before timing anything.
        bin_path("weft-agent");
        bin_path("weftctl");
        let out = Command::new(env!("CARGO_BIN_EXE_weft-lab"))
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--prefix")
            .arg(&self.prefix)
            .env("WEFT_BIN_DIR", weft_tests::bin_dir())
            .output()
            .expect("run weft-lab");
        eprintln!(
            "weft-lab {}: {:?}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for CliLab {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.run(&["down"]);
        }
    }
}

#[test]
fn up_status_down() {
    let mut lab = CliLab::new();
    let up = lab.run(&["up", "--hosts", "2", "--ns-per-host", "2"]);
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(up.status.success(), "weft-lab up failed");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    // Every namespace reached every other one, across the two hosts too.
    assert!(stdout.contains("16/16 pings answered"), "{stdout}");
    assert!(stdout.contains("peers: h2 vxlan"), "{stdout}");
    assert!(stdout.contains("peers: h1 vxlan"), "{stdout}");
    assert!(stdout.contains("saw source 198.18.0.11:"), "{stdout}");
    assert!(stdout.contains("saw source 198.18.0.12:"), "{stdout}");
    assert!(lab.dir.join("lab.json").is_file());

    // Still up after `up` exited.
    let ns = format!("{}-h1", lab.prefix);
    assert!(Path::new("/run/netns").join(&ns).exists());
    let st = lab.run(&["status"]);
    let text = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(st.status.success(), "status: {text}");
    assert!(text.contains("h1-n1") && text.contains("h2-n2"), "{text}");
    assert!(text.contains("running (pid"), "{text}");
    assert!(text.contains("controller-c1"), "{text}");
    assert!(text.contains("(connected)"), "{text}");
    assert!(!text.contains("NOT"), "{text}");

    // A second `up` on the same dir is refused and changes nothing.
    let again = lab.run(&["up"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));

    let down = lab.run(&["down"]);
    lab.down = true;
    assert!(down.status.success(), "down failed");
    assert!(!Path::new("/run/netns").join(&ns).exists());
    assert!(!lab.dir.exists());
    assert!(!cleanup::mount_points()
        .iter()
        .any(|m| m.starts_with(&lab.dir)));
    let st = lab.run(&["status"]);
    assert!(!st.status.success(), "status of a removed lab must fail");
}
