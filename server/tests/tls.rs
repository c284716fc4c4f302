//! TLS on the client port, in real processes: three servers with certificates from a test CA
//! and client certificates required. The client library and the CLI commit over TLS; a client
//! that trusts another CA, one without a client certificate, and one speaking plain TCP are
//! refused; a server certificate replaced on disk is served to new connections without a
//! restart.
#![cfg(feature = "cli")]

mod common;

use bytes::Bytes;
use common::{eventually, Cluster, TOKEN};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use server::netclient::Client;
use std::path::Path;
use std::time::Duration;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf certificate for `names` signed by `ca`, written as `<stem>.pem` and `<stem>.key`.
fn leaf(dir: &Path, stem: &str, names: &[&str], ca: &Ca) {
    leaf_valid(dir, stem, names, ca, None)
}

/// [`leaf`], valid only from the start of year `from` to the start of year `to` when given.
fn leaf_valid(dir: &Path, stem: &str, names: &[&str], ca: &Ca, years: Option<(i32, i32)>) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if let Some((from, to)) = years {
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(to, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
}

fn client_tls(dir: &Path, ca: &str, identity: Option<&str>) -> server::netclient::Tls {
    let (c, k) = (
        identity.map(|i| dir.join(format!("{i}.pem"))),
        identity.map(|i| dir.join(format!("{i}.key"))),
    );
    server::tls::client_config(&dir.join(ca), c.as_deref().zip(k.as_deref())).unwrap()
}

async fn connect(c: &Cluster, tls: Option<server::netclient::Tls>) -> Result<Client, String> {
    Client::connect_with(&c.clients, Bytes::from_static(TOKEN.as_bytes()), 41, tls)
        .await
        .map_err(|e| e.to_string())
}

async fn put(cl: &mut Client, key: &str) -> Result<(), String> {
    let mut t = cl.begin();
    t.store(
        storage::Oid::new(Bytes::from(key.to_string())).unwrap(),
        Some(Bytes::from_static(b"v")),
        None,
    );
    cl.commit(t, Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_tls_with_certificates_and_a_renewed_certificate_is_served() {
    let mut c = Cluster::with(3, Default::default(), false);
    let d = c.dir.path().to_path_buf();
    let servers = ca("servers");
    let clients = ca("clients");
    std::fs::write(d.join("ca.pem"), servers.cert.pem()).unwrap();
    std::fs::write(d.join("clients-ca.pem"), clients.cert.pem()).unwrap();
    leaf(&d, "server", &["127.0.0.1"], &servers);
    leaf(&d, "client", &["client"], &clients);
    let conf = std::fs::read_to_string(&c.conf)
        .unwrap()
        .replace("client_plaintext = true\n", "");
    let at = conf.find("[[server]]").unwrap();
    let mut conf = conf;
    conf.insert_str(
        at,
        "[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"clients-ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"\n",
    );
    std::fs::write(&c.conf, conf).unwrap();
    for i in 0..3 {
        c.start(i);
    }
    let good = client_tls(&d, "ca.pem", Some("client"));
    let mut cl = None;
    for _ in 0..100 {
        if let Ok(x) = connect(&c, Some(good.clone())).await {
            if x.primary().is_some() {
                cl = Some(x);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut cl = cl.unwrap_or_else(|| panic!("no TLS client connected:\n{}", c.logs()));
    put(&mut cl, "over-tls").await.unwrap();

    // The CLI, with the [tls] section of the same file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_standby"))
        .arg("--config")
        .arg(&c.conf)
        .args(["get", "over-tls"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused: another CA, no client certificate, plain TCP.
    let other = ca("someone else");
    std::fs::write(d.join("other-ca.pem"), other.cert.pem()).unwrap();
    let e = connect(&c, Some(client_tls(&d, "other-ca.pem", Some("client"))))
        .await
        .err()
        .expect("a server certificate from an unknown CA is refused");
    assert!(e.contains("TLS"), "{e}");
    let e = connect(&c, Some(client_tls(&d, "ca.pem", None)))
        .await
        .err()
        .expect("a client without a certificate is refused");
    // TLS 1.3: the client's half of the handshake ends before the server checks its
    // certificate, so the refusal comes as an alert on the first read.
    assert!(
        e.contains("TLS") || e.contains("CertificateRequired"),
        "{e}"
    );
    assert!(connect(&c, None).await.is_err(), "plain TCP is refused");
    leaf_valid(&d, "expired", &["client"], &clients, Some((2020, 2021)));
    let e = connect(&c, Some(client_tls(&d, "ca.pem", Some("expired"))))
        .await
        .err()
        .expect("an expired client certificate is refused");
    assert!(e.contains("TLS") || e.contains("Certificate"), "{e}");

    // A renewed certificate (from another CA here, to tell them apart) is served to new
    // connections within a few seconds, without a restart.
    std::fs::write(d.join("new-ca.pem"), other.cert.pem()).unwrap();
    leaf(&d, "server", &["127.0.0.1"], &other);
    let renewed = client_tls(&d, "new-ca.pem", Some("client"));
    let served = eventually(
        Duration::from_secs(6),
        Duration::from_millis(100),
        || async { connect(&c, Some(renewed.clone())).await.is_ok() },
    )
    .await;
    assert!(
        served,
        "the renewed certificate was not served:\n{}",
        c.logs()
    );
    assert!(
        connect(&c, Some(good)).await.is_err(),
        "the old certificate is still served"
    );
    // The connection opened before the renewal still works.
    put(&mut cl, "after-renewal").await.unwrap();
}
