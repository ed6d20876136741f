//! `testpg`: the private PostgreSQL server of [`iothub_testpg`] for test suites that are not
//! Rust (the Python SDK suite's cluster tests). It starts a server and makes one fresh database,
//! prints `url URL` on stdout, then takes commands on stdin, one per line, answering each with
//! `ok` or `error TEXT`: `stop` (as a crash would), `start`, `database` (another fresh database;
//! answers `url URL`). At the end of stdin it exits, and the server is stopped and deleted.

use std::io::{BufRead, Write};

fn main() {
    let pg = iothub_testpg::shared();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "url {}", pg.database());
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim() {
            "stop" | "start" => match pg.pg_ctl(line.trim()) {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("error {}", e.replace('\n', " ")),
            },
            "database" => format!("url {}", pg.database()),
            other => format!("error unknown command '{other}': expected stop, start or database"),
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}
