//! A real PostgreSQL server for the cluster tests, started once per test run and stopped when
//! the run ends, however it ends.
//!
//! `ORCHESTR8_TEST_DATABASE_URL` names a server to use instead (its user must be allowed to
//! create databases). Otherwise the tests make a throwaway cluster with the `initdb` and
//! `postgres` of the installed Debian `postgresql` package (as the `postgres` user when run as
//! root: `initdb` refuses root), in a temporary folder, listening on a free loopback port, with a
//! certificate for TLS signed by a CA of its own, both made by `openssl`. A shell
//! started with it holds the read end of a pipe whose write end only this test process has: when
//! the process exits (finished, panicked or killed), the shell reads end-of-file, stops the server
//! and removes its folder. These tests never skip: without a server they fail and say how to get
//! one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub struct PgServer {
    /// The URL of the server's administrative database (`postgres`).
    admin_url: String,
    /// The CA that signed the server's certificate (for `localhost` only, so that a check of
    /// the name shows): what to trust when connecting over TLS. `None` for a server named by the environment.
    cert: Option<PathBuf>,
    /// The guard shell; its stdin is the pipe that keeps the server up.
    _guard: Mutex<Option<Child>>,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The tests' PostgreSQL server, started on first use.
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(why) => panic!(
            "the cluster tests need PostgreSQL: {why}. Install the Debian package `postgresql` \
             (.ci/run does), or set ORCHESTR8_TEST_DATABASE_URL to a server whose user may \
             create databases"
        ),
    }
}

impl PgServer {
    /// The CA file to trust for the server's certificate over TLS.
    pub fn tls_cert(&self) -> &Path {
        self.cert.as_deref().expect(
            "the TLS test needs the tests' own PostgreSQL server (it speaks TLS with a \
             certificate of its own): unset ORCHESTR8_TEST_DATABASE_URL",
        )
    }

    /// A new, empty database on the server, and its URL.
    pub async fn fresh_database(&self) -> String {
        let name = format!("o8_test_{}", uuid::Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test server");
        let conn = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        drop(client);
        let _ = conn.await;
        with_database(&self.admin_url, &name)
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).expect("a database URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

fn start() -> Result<PgServer, String> {
    if let Ok(url) = std::env::var("ORCHESTR8_TEST_DATABASE_URL") {
        return Ok(PgServer {
            admin_url: url,
            cert: None,
            _guard: Mutex::new(None),
        });
    }
    let bin = postgres_bin().ok_or("no initdb found on PATH or under /usr/lib/postgresql")?;
    let root = std::env::temp_dir().join(format!("o8-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot make {}: {e}", root.display()))?;
    let as_root = nix::unistd::Uid::effective().is_root();
    if as_root {
        let pg = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or("running as root, and there is no `postgres` user to run the server as")?;
        nix::unistd::chown(&root, Some(pg.uid), Some(pg.gid))
            .map_err(|e| format!("cannot hand {} to postgres: {e}", root.display()))?;
    }
    // A CA of its own and a certificate it signed, so that connections over TLS are tested too.
    let (cert, key) = (root.join("server.crt"), root.join("server.key"));
    let (ca, ca_key) = (root.join("ca.crt"), root.join("ca.key"));
    let (csr, ext) = (root.join("server.csr"), root.join("server.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", ext.display()))?;
    let openssl = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run openssl to make the server's certificate: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl could not make the server's certificate: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    openssl(&[
        &os("req"),
        &os("-x509"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-days"),
        &os("2"),
        &os("-subj"),
        &os("/CN=orchestr8-async test CA"),
        &os("-keyout"),
        ca_key.as_os_str(),
        &os("-out"),
        ca.as_os_str(),
    ])?;
    openssl(&[
        &os("req"),
        &os("-newkey"),
        &os("rsa:2048"),
        &os("-nodes"),
        &os("-subj"),
        &os("/CN=localhost"),
        &os("-keyout"),
        key.as_os_str(),
        &os("-out"),
        csr.as_os_str(),
    ])?;
    openssl(&[
        &os("x509"),
        &os("-req"),
        &os("-in"),
        csr.as_os_str(),
        &os("-CA"),
        ca.as_os_str(),
        &os("-CAkey"),
        ca_key.as_os_str(),
        &os("-CAcreateserial"),
        &os("-days"),
        &os("2"),
        &os("-extfile"),
        ext.as_os_str(),
        &os("-out"),
        cert.as_os_str(),
    ])?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot protect {}: {e}", key.display()))?;
    }
    if as_root {
        let pg = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or("no `postgres` user")?;
        for f in [&cert, &key] {
            nix::unistd::chown(f, Some(pg.uid), Some(pg.gid))
                .map_err(|e| format!("cannot hand {} to postgres: {e}", f.display()))?;
        }
    }
    let data = root.join("data");
    let out = as_server_user(as_root, &bin.join("initdb"))
        .args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .arg("--no-sync")
        .arg("-D")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    // The server does not sync to disk: it is thrown away, and no test kills it.
    // The shell ignores the signals a terminal or a CI time-out sends the whole process group,
    // so it still stops the server and removes the folder (postgres sets its own handlers).
    let script = r#"
        trap '' INT TERM HUP
        "$1/postgres" -D "$2/data" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=300 -c ssl=on -c ssl_cert_file="$2/server.crt" \
            -c ssl_key_file="$2/server.key" >"$2/server.log" 2>&1 &
        server=$!
        read _ignored
        kill -INT "$server"
        wait "$server"
        rm -rf "$2"
    "#;
    let mut guard = as_server_user(as_root, Path::new("sh"))
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&bin)
        .arg(&root)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && accepts(&admin_url) {
            break;
        }
        if let Ok(Some(status)) = guard.try_wait() {
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            return Err(format!("postgres exited ({status}): {log}"));
        }
        if Instant::now() > deadline {
            if let Some(stdin) = guard.stdin.as_mut() {
                let _ = stdin.write_all(b"\n");
            }
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            return Err(format!(
                "postgres did not accept connections on port {port} within 30 s: {log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(PgServer {
        admin_url,
        cert: Some(ca),
        _guard: Mutex::new(Some(guard)),
    })
}

/// Whether the server answers a query (it accepts TCP before it has finished starting).
fn accepts(url: &str) -> bool {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.ok()
        })
    })
    .join()
    .ok()
    .flatten()
    .is_some()
}

/// A command run as the `postgres` user when this process is root.
fn as_server_user(as_root: bool, program: &Path) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The folder holding `initdb` and `postgres`: on PATH, else the newest Debian version.
fn postgres_bin() -> Option<PathBuf> {
    if let Ok(initdb) = which::which("initdb") {
        let real = std::fs::canonicalize(initdb).ok()?;
        return real.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}
