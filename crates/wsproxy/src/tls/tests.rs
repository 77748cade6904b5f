//! Settings and their errors, without a network.

use std::error::Error;
use std::io;
use std::sync::Arc;

use wsproxy_test_support::Ca;

use super::BackendTls;

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("wsproxy-no-such-dir/ca.pem");
    let error = BackendTls::new().add_ca_pem_file(&path).unwrap_err();
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.starts_with("cannot read the CA file"), "{message}");
    assert_eq!(error.path(), Some(path.as_path()));
    let io = error.source().unwrap().downcast_ref::<io::Error>().unwrap();
    assert_eq!(io.kind(), io::ErrorKind::NotFound);

    let error = BackendTls::new()
        .client_cert_pem_files("/no/such/cert.pem", "/no/such/key.pem")
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot read the client certificate file /no/such/cert.pem"
    );
}

#[test]
fn pem_without_a_certificate_is_an_error() {
    let key = Ca::new("test CA").leaf(&["client.test"]).key;
    // A PEM file, but of a key.
    let error = BackendTls::new().add_ca_pem(key.as_bytes()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no PEM CERTIFICATE block for CA certificates"
    );
    assert!(BackendTls::new().add_ca_pem(b"").is_err());
    // A CERTIFICATE block that holds no certificate.
    let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
    let error = BackendTls::new().add_ca_pem(junk).unwrap_err();
    assert_eq!(error.to_string(), "a CA certificate cannot be used");
    assert!(error.source().is_some());
    // Broken base64.
    let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
    let error = BackendTls::new().add_ca_pem(broken).unwrap_err();
    assert!(error.to_string().starts_with("invalid PEM"), "{error}");
}

#[test]
fn a_client_key_must_match_its_certificate() {
    let ca = Ca::new("test CA");
    let mine = ca.leaf(&["client.test"]);
    let (cert, key) = (mine.cert, mine.key);
    let other_key = ca.leaf(&["client.test"]).key;
    assert!(BackendTls::new().client_cert_pem(&cert, &key).is_ok());
    let error = BackendTls::new()
        .client_cert_pem(&cert, &other_key)
        .unwrap_err();
    assert_eq!(error.to_string(), "the client key cannot be used");
    let error = BackendTls::new().client_cert_pem(&cert, &cert).unwrap_err();
    assert!(error.to_string().contains("client key"), "{error}");
    let error = BackendTls::new().client_cert_pem(&key, &key).unwrap_err();
    assert!(error.to_string().contains("client certificate"), "{error}");
}

#[test]
fn server_names() {
    assert!(BackendTls::new().server_name("chat.internal").is_ok());
    assert!(BackendTls::new().server_name("10.0.0.1").is_ok());
    let error = BackendTls::new().server_name("not a name").unwrap_err();
    assert_eq!(
        error.to_string(),
        "\"not a name\" is not a valid TLS server name"
    );
}

#[test]
fn the_config_trusts_what_was_asked_offers_http_1_1_and_is_built_once() {
    let ca_pem = Ca::new("test CA").pem;
    let tls = BackendTls::empty().add_ca_pem(&ca_pem).unwrap();
    let config = tls.client_config();
    assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    assert!(!config.client_auth_cert_resolver.has_certs());
    // Clones share it; a changed setting builds anew.
    assert!(Arc::ptr_eq(&config, &tls.clone().client_config()));
    let named = tls.clone().server_name("a.test").unwrap();
    assert!(!Arc::ptr_eq(&config, &named.client_config()));
    assert!(Arc::ptr_eq(&config, &tls.client_config()));

    assert_eq!(tls.roots().roots.len(), 1);
    let public = BackendTls::new().add_ca_pem(&ca_pem).unwrap();
    assert_eq!(
        public.roots().roots.len(),
        webpki_roots::TLS_SERVER_ROOTS.len() + 1
    );
    assert!(format!("{public:?}").contains("added_cas: 1"));
}
