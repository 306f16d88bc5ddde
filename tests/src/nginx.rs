//! nginx from the distribution as a real consumer of the files the agent writes
//! (`[[files]]`): it serves TLS from them and reloads them on `SIGHUP`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx, killed on drop.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// Where it listens (127.0.0.1).
    pub port: u16,
}

impl Nginx {
    /// Starts nginx in `dir` (its pid file is `dir/nginx.pid`) on a free port, serving
    /// `served\n` over TLS with `cert_dir`'s `svid.pem` and `svid_key.pem`; with
    /// `client_bundle`, it requires a client certificate chaining to that file.
    pub fn start(dir: &Path, cert_dir: &Path, client_bundle: Option<&Path>) -> Self {
        let nginx = which("nginx")
            .expect("nginx is needed (apt-get install nginx-light; .ci/run installs it)");
        let port = crate::spire::free_port();
        let d = dir.display();
        let c = cert_dir.display();
        let client = client_bundle.map_or(String::new(), |bundle| {
            format!(
                "    ssl_client_certificate {};\n    ssl_verify_client on;\n",
                bundle.display()
            )
        });
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{}}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
                   fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
                   server {{\n    listen 127.0.0.1:{port} ssl;\n\
                     ssl_certificate {c}/svid.pem;\n    ssl_certificate_key {c}/svid_key.pem;\n{client}\
                     location / {{ return 200 \"served\\n\"; }}\n  }}\n}}\n"
            ),
        )
        .expect("write nginx.conf");
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx temp dir");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let server = Self {
            child,
            dir: dir.to_owned(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                server.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// nginx's error log.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The serial (`serial=HEX`, as openssl prints it) of the certificate it presents.
    pub fn served_serial(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -noout -serial",
                self.port
            ))
            .output()
            .expect("openssl");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(program))
    .find(|path| path.exists())
}
