//! PreUp, PostUp, PreDown and PostDown, run as wg-quick runs them: each command in order with
//! `/bin/sh -c`, every `%i` replaced by the interface name. Their output goes to the log, a
//! line at a time. wg-quick stops at the first failing command (it runs under `set -e`); so do
//! the up hooks here, and the caller takes the interface down again. A failing down hook is
//! logged and the rest still run, so that a broken command never leaves an interface half
//! removed.

use std::process::Stdio;

use anyhow::{Context, bail};

/// Which hook list, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    PreUp,
    PostUp,
    PreDown,
    PostDown,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::PreUp => "pre_up",
            Stage::PostUp => "post_up",
            Stage::PreDown => "pre_down",
            Stage::PostDown => "post_down",
        }
    }
}

/// The command as the shell gets it: every `%i` is the interface name (wg-quick's rule).
pub fn expand(command: &str, ifname: &str) -> String {
    command.replace("%i", ifname)
}

/// Runs the up hooks of `stage`, stopping at the first that fails (an error naming it).
pub async fn run_up(stage: Stage, commands: &[String], ifname: &str) -> anyhow::Result<()> {
    for command in commands {
        run_one(stage, command, ifname).await?;
    }
    Ok(())
}

/// Runs the down hooks of `stage`, all of them; failures are logged.
pub async fn run_down(stage: Stage, commands: &[String], ifname: &str) {
    for command in commands {
        if let Err(e) = run_one(stage, command, ifname).await {
            tracing::error!("{e:#}");
        }
    }
}

async fn run_one(stage: Stage, command: &str, ifname: &str) -> anyhow::Result<()> {
    let expanded = expand(command, ifname);
    tracing::info!(hook = stage.name(), "running: {expanded}");
    let output = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&expanded)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("{}: cannot run /bin/sh for {expanded:?}", stage.name()))?;
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&output.stderr).lines())
    {
        tracing::info!(hook = stage.name(), "{line}");
    }
    if !output.status.success() {
        bail!(
            "{} hook {expanded:?} failed ({})",
            stage.name(),
            output.status
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn percent_i_is_the_interface_everywhere() {
        assert_eq!(
            expand("ip link show %i; echo %i%i", "wg0"),
            "ip link show wg0; echo wg0wg0"
        );
        assert_eq!(expand("no placeholder", "wg0"), "no placeholder");
    }

    #[test]
    fn up_hooks_run_in_order_and_stop_at_the_first_failure() {
        let dir = std::env::temp_dir().join(format!("tandem-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let commands: Vec<String> = vec![
            format!("echo one %i >> {}", log.display()),
            format!("echo two >> {}", log.display()),
            "exit 3".to_owned(),
            format!("echo never >> {}", log.display()),
        ];
        let err = rt()
            .block_on(run_up(Stage::PostUp, &commands, "tnd7"))
            .expect_err("the third command fails");
        assert!(
            err.to_string().contains("post_up hook \"exit 3\" failed"),
            "{err}"
        );
        let text = std::fs::read_to_string(&log).expect("log");
        assert_eq!(text, "one tnd7\ntwo\n");

        // Down hooks all run, whatever fails.
        std::fs::remove_file(&log).expect("rm");
        rt().block_on(run_down(Stage::PreDown, &commands, "tnd7"));
        let text = std::fs::read_to_string(&log).expect("log");
        assert_eq!(text, "one tnd7\ntwo\nnever\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
