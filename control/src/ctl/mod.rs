//! `sipvane ctl`: the operator's client for the management API. Each verb is
//! one or two HTTP requests; output is a table, or the API's JSON with
//! `--json`. Every failure is one line on stderr and exit status 1.

mod client;
mod render;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::model::{
    Dialogs, Dispatcher, ErrorStats, Health, Registrations, RemoveRegistration,
    RemovedRegistration, RestartReply, SetStateReply, SetStateRequest, Status,
};
use crate::cli::{CtlArgs, CtlCommand, DispatcherCommand, TopArgs, UlCommand};
use client::Client;

/// Runs one `sipvane ctl` command.
pub fn main(args: &CtlArgs) -> ExitCode {
    let client = Client::new(args.mgmt, args.token.clone());
    let result = match &args.command {
        CtlCommand::Dispatcher(DispatcherCommand::List) => {
            show(&client, args.json, "/dispatcher", |d: &Dispatcher| {
                render::dispatcher(d)
            })
        }
        CtlCommand::Dispatcher(DispatcherCommand::Reload) => reload(&client, args.json),
        CtlCommand::Dispatcher(DispatcherCommand::SetState { state, uri, set }) => {
            set_state(&client, args.json, state, uri, *set)
        }
        CtlCommand::Stats => stats(&client, args.json),
        CtlCommand::Dialogs => show(&client, args.json, "/dialogs", |d: &Dialogs| {
            render::dialogs(d)
        }),
        CtlCommand::Ping => ping(&client, args.json),
        CtlCommand::Top(top_args) => top(&client, args.json, top_args),
        CtlCommand::Ul(UlCommand::Show { aor }) => {
            let path = match aor {
                Some(a) => format!("/registrations?aor={}", query_escape(a)),
                None => "/registrations".to_owned(),
            };
            show(&client, args.json, &path, |r: &Registrations| {
                render::registrations(r)
            })
        }
        CtlCommand::Ul(UlCommand::Rm { aor }) => ul_rm(&client, args.json, aor),
        CtlCommand::Restart => restart(&client, args.json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sipvane ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(text: &str) -> Result<ExitCode, String> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`sipvane ctl … | head`) is not an error worth a message.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// GET `path`, then print its JSON or `render` of it.
fn show<T: serde::de::DeserializeOwned>(
    client: &Client,
    json: bool,
    path: &str,
    render: impl Fn(&T) -> String,
) -> Result<ExitCode, String> {
    let r = client.get(path)?;
    if !r.ok() {
        return Err(r.error(path));
    }
    if json {
        return print(&(r.pretty() + "\n"));
    }
    print(&render(&r.decode(path)?))
}

fn restart(client: &Client, json: bool) -> Result<ExitCode, String> {
    let path = "/restart";
    let r = client.post::<()>(path, None)?;
    if !r.ok() {
        return Err(r.error(path));
    }
    if json {
        return print(&(r.pretty() + "\n"));
    }
    let v: RestartReply = r.decode(path)?;
    print(&format!(
        "pid {} took over from pid {}, which exits once its open transactions end\n",
        v.new_pid, v.old_pid
    ))
}

fn reload(client: &Client, json: bool) -> Result<ExitCode, String> {
    let path = "/dispatcher/reload";
    let r = client.post::<()>(path, None)?;
    if !r.ok() {
        return Err(r.error(path));
    }
    if json {
        return print(&(r.pretty() + "\n"));
    }
    let v: Value = r.decode(path)?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    print(&format!(
        "reloaded {}: {} set(s), {} destination(s) ({} added, {} removed)\n",
        v.get("source").and_then(Value::as_str).unwrap_or("?"),
        n("sets"),
        n("destinations"),
        n("added"),
        n("removed")
    ))
}

fn set_state(
    client: &Client,
    json: bool,
    state: &str,
    uri: &str,
    set: Option<u32>,
) -> Result<ExitCode, String> {
    let path = "/dispatcher/state";
    let body = SetStateRequest {
        set,
        uri: uri.to_owned(),
        state: state.to_owned(),
    };
    let r = client.post(path, Some(&body))?;
    if !r.ok() {
        return Err(r.error(path));
    }
    if json {
        return print(&(r.pretty() + "\n"));
    }
    let reply: SetStateReply = r.decode(path)?;
    let text: String = reply
        .changed
        .iter()
        .map(|c| format!("set {} {}: {} -> {}\n", c.set, c.uri, c.previous, c.state))
        .collect();
    print(&text)
}

fn ul_rm(client: &Client, json: bool, aor: &str) -> Result<ExitCode, String> {
    let path = "/registrations/remove";
    let body = RemoveRegistration {
        aor: aor.to_owned(),
    };
    let r = client.post(path, Some(&body))?;
    if !r.ok() {
        return Err(r.error(path));
    }
    if json {
        return print(&(r.pretty() + "\n"));
    }
    let reply: RemovedRegistration = r.decode(path)?;
    print(&format!(
        "{}: {} binding(s) removed\n",
        reply.aor, reply.removed
    ))
}

/// `s` for a URL query value (`@` and the like percent-encoded).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn stats(client: &Client, json: bool) -> Result<ExitCode, String> {
    if json {
        let status: Value = client.fetch("/status")?;
        let errors: Value = client.fetch("/errors/stats")?;
        let both = json!({ "status": status, "errors": errors });
        return print(&(serde_json::to_string_pretty(&both).unwrap_or_default() + "\n"));
    }
    let status: Status = client.fetch("/status")?;
    let errors: ErrorStats = client.fetch("/errors/stats")?;
    print(&render::stats(&status, &errors))
}

fn ping(client: &Client, json: bool) -> Result<ExitCode, String> {
    let path = "/health";
    let r = client.get(path)?;
    // 503 carries the verdict too; anything else is an error.
    if !r.ok() && r.status != 503 {
        return Err(r.error(path));
    }
    let h: Health = r.decode(path)?;
    if json {
        print(&(r.pretty() + "\n"))?;
    } else {
        print(&render::health(&h))?;
    }
    Ok(if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn top(client: &Client, json: bool, args: &TopArgs) -> Result<ExitCode, String> {
    let tty = std::io::stdout().is_terminal() && !json;
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut n = 0u64;
    loop {
        let status: Status = client.fetch("/status")?;
        let dispatcher: Dispatcher = client.fetch("/dispatcher")?;
        let errors: ErrorStats = client.fetch("/errors/stats")?;
        let frame = if json {
            // One JSON object per line, for scripts.
            let v = json!({ "status": status, "dispatcher": dispatcher, "errors": errors });
            v.to_string() + "\n"
        } else if tty {
            // Home the cursor and clear the screen: plain ANSI, no TUI library.
            format!(
                "\x1b[H\x1b[2J{}",
                render::top(&status, &dispatcher, &errors)
            )
        } else {
            // Piped: frames one after another, separated by a blank line.
            let sep = if n == 0 { "" } else { "\n" };
            format!("{sep}{}", render::top(&status, &dispatcher, &errors))
        };
        print(&frame)?;
        n += 1;
        if args.iterations.is_some_and(|max| n >= max) {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(interval);
    }
}
