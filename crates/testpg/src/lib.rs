//! A private PostgreSQL server for tests, started by the tests themselves: no system service is
//! assumed, none is touched. Debian's server binaries (`initdb`, `pg_ctl`, from the `postgresql`
//! package) run as the `postgres` user (initdb refuses root) on a data directory under the
//! workspace's `target/testpg/`, listening on a free loopback port. Password authentication is
//! required over TCP (the store connects as it would in production); the unix socket, in the
//! data directory, is for the test's own administration.
//!
//! One server per test process ([`shared`]); each test takes a fresh database of its own
//! ([`TestPostgres::database`]). A watcher process stops the server and deletes its directory
//! when the test process ends, however it ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The password of the role the stores connect as.
const PASSWORD: &str = "iothub-test-password";

/// A running server (see the module comment).
pub struct TestPostgres {
    dir: PathBuf,
    port: u16,
    psql: PathBuf,
}

static SHARED: OnceLock<Result<TestPostgres, String>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// The server of this test process, started on first use. Panics with what is missing when the
/// server binaries are not installed.
pub fn shared() -> &'static TestPostgres {
    match SHARED.get_or_init(TestPostgres::start) {
        Ok(pg) => pg,
        Err(e) => panic!("{e}"),
    }
}

/// A binary of Debian's PostgreSQL server package (`/usr/lib/postgresql/N/bin`), or on PATH.
fn server_binary(name: &str) -> Result<PathBuf, String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    if let Some(found) = versions
        .iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
    {
        return Ok(found);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .ok_or_else(|| {
            format!("PostgreSQL server binaries not found ({name}): install Debian's postgresql package (scripts/test does)")
        })
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `target/` of the workspace this test binary was built in (it runs from target/*/deps/).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|p| p.file_name().is_some_and(|n| n == "target"))
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(std::env::temp_dir)
}

/// Runs `program args` as the postgres user when we are root (initdb refuses root).
fn as_postgres(program: &Path, args: &[&str]) -> Result<String, String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl TestPostgres {
    fn start() -> Result<TestPostgres, String> {
        let initdb = server_binary("initdb")?;
        let pg_ctl = server_binary("pg_ctl")?;
        let psql = server_binary("psql")?;
        let dir = target_dir().join("testpg").join(format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // The postgres user must reach and own it.
        for p in dir.ancestors().take(3) {
            let _ = Command::new("chmod").arg("o+x").arg(p).status();
        }
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let data = dir.to_string_lossy().into_owned();
        let pwfile = std::env::temp_dir().join(format!("testpg-{}.pw", std::process::id()));
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).map_err(|e| e.to_string())?;
        let _ = Command::new("chmod").arg("644").arg(&pwfile).status();
        as_postgres(
            &initdb,
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                &pwfile.to_string_lossy(),
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
        );
        as_postgres(
            &pg_ctl,
            &[
                "-D",
                &data,
                "-l",
                &format!("{data}/server.log"),
                "-w",
                "-o",
                &options,
                "start",
            ],
        )?;
        watch_for_exit(&pg_ctl, &dir);
        let pg = TestPostgres { dir, port, psql };
        pg.admin(&format!(
            "CREATE ROLE iothub LOGIN PASSWORD '{PASSWORD}' CREATEDB"
        ))?;
        Ok(pg)
    }

    /// Runs one SQL statement as the superuser, over the unix socket.
    pub fn admin(&self, sql: &str) -> Result<String, String> {
        let dir = self.dir.to_string_lossy().into_owned();
        as_postgres(
            &self.psql,
            &[
                "-h",
                &dir,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-qtA",
                "-c",
                sql,
            ],
        )
    }

    /// A fresh, empty database owned by the `iothub` role; its URL (password authentication
    /// over TCP, as a node connects).
    pub fn database(&self) -> String {
        let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        self.admin(&format!("CREATE DATABASE {name} OWNER iothub"))
            .unwrap_or_else(|e| panic!("{e}"));
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://iothub:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server, as a crash or an operator would (`immediate`), or restarts it.
    pub fn pg_ctl(&self, action: &str) -> Result<String, String> {
        let pg_ctl = server_binary("pg_ctl")?;
        let data = self.dir.to_string_lossy().into_owned();
        let options = format!(
            "-p {} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200",
            self.port
        );
        let log = format!("{data}/server.log");
        match action {
            "stop" => as_postgres(&pg_ctl, &["-D", &data, "-m", "immediate", "-w", "stop"]),
            "start" => as_postgres(
                &pg_ctl,
                &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
            ),
            other => Err(format!("pg_ctl {other}: expected stop or start")),
        }
    }
}

/// A shell that waits for this process to end, then stops the server and removes its directory:
/// statics are never dropped, and a killed test run must not leave a server behind.
fn watch_for_exit(pg_ctl: &Path, dir: &Path) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         if [ \"$(id -u)\" = 0 ]; then runuser -u postgres -- {ctl} -D {dir} -m immediate stop; \
         else {ctl} -D {dir} -m immediate stop; fi >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        ctl = pg_ctl.display(),
        dir = dir.display()
    );
    // In a session of its own: a signal to the test's process group (a timeout, Ctrl-C) must
    // not take the watcher with it.
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
