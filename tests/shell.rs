//! Shell habits: completion scripts and the manual page, generated from the command line's
//! own definitions, so they list every subcommand and stay in step with it.

use std::process::Command;

const SUBCOMMANDS: [&str; 10] = [
    "run",
    "apply",
    "plan",
    "status",
    "check-downgrade",
    "validate",
    "set",
    "get",
    "completions",
    "man",
];

fn output(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rack-reconciler"))
        .args(args)
        // No config file is read for these.
        .env(
            "RACK_RECONCILER_CONFIG",
            "/nonexistent/rack-reconciler.yaml",
        )
        .output()
        .expect("run rack-reconciler");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("text")
}

/// Checks `text` with `program args FILE`, when the program is installed.
fn syntax_ok(program: &str, args: &[&str], text: &str) -> Option<std::process::Output> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("script");
    std::fs::write(&file, text).expect("write");
    Command::new(program).args(args).arg(&file).output().ok()
}

#[test]
fn completions_cover_every_subcommand_and_bash_parses_its_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = output(&["completions", shell]);
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        assert!(
            script.contains("max-errors") && script.contains("detailed-exitcode"),
            "{shell} completion lacks the options"
        );
    }
    let checked =
        syntax_ok("bash", &["-n"], &output(&["completions", "bash"])).expect("bash is installed");
    assert!(checked.status.success(), "{checked:?}");
    if let Some(zsh) = syntax_ok("zsh", &["-n"], &output(&["completions", "zsh"])) {
        assert!(zsh.status.success(), "{zsh:?}");
    }
}

#[test]
fn the_manual_page_is_valid_roff_naming_every_subcommand() {
    let page = output(&["man"]);
    assert!(page.contains(".TH rack-reconciler 1"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&sub.replace('-', "\\-")),
            "the page lacks {sub}"
        );
    }
    // groff with every warning on: a malformed page says so on stderr.
    match syntax_ok("groff", &["-man", "-ww", "-z"], &page) {
        Some(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        None => eprintln!("groff is not installed: the page's roff was not checked"),
    }
}
