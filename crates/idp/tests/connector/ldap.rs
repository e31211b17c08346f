//! LDAP against a throwaway slapd (Debian's `slapd` package) with a test CA: ldaps, StartTLS, plain
//! loopback, filter escaping, entry counts, passwords and certificate checks. Skipped, loudly, when
//! `/usr/sbin/slapd` is not installed.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowgate_core::ErrorKind;
use flowgate_core::idp::model::LdapAttributes;
use flowgate_core::idp::ports::{CONNECTOR_LDAP_FAILED, CONNECTOR_UNREACHABLE, IdpConnector as _, LdapProvider};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::connectors;

const SLAPD: &str = "/usr/sbin/slapd";
const SLAPADD: &str = "/usr/sbin/slapadd";
const BASE: &str = "dc=example,dc=test";
const ADMIN_DN: &str = "cn=admin,dc=example,dc=test";
const ADMIN_PASSWORD: &str = "admin-secret";
/// A uid full of filter syntax: only an escaped filter finds it.
const ODD_UID: &str = "o*d(d)\\x";

/// A running slapd in a temporary directory; killed when dropped.
struct Slapd {
    child: Child,
    ldap_port: u16,
    ldaps_port: u16,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn ldif() -> String {
    let person = |uid: &str, cn: &str, given: &str, sn: &str, mail: &str, password: &str| {
        format!(
            "dn: cn={cn},ou=people,{BASE}\nobjectClass: inetOrgPerson\ncn: {cn}\nuid: {uid}\ngivenName: {given}\n\
             sn: {sn}\nmail: {mail}\nuserPassword: {password}\npreferredLanguage: en\n\n"
        )
    };
    let mut ldif = format!(
        "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n"
    );
    ldif.push_str(&person("alice", "Alice Liddell", "Alice", "Liddell", "alice@example.test", "alice-password"));
    ldif.push_str(&person("bob", "Bob Builder", "Bob", "Builder", "shared@example.test", "bob-password"));
    ldif.push_str(&person("carol", "Carol Singer", "Carol", "Singer", "shared@example.test", "carol-password"));
    ldif.push_str(&person(ODD_UID, "Odd One", "Odd", "One", "odd@example.test", "odd-password"));
    ldif
}

/// Starts slapd with ldap:// and ldaps:// on free loopback ports, or answers `None` (and says why on
/// stderr) when slapd is not installed.
fn start_slapd() -> Option<Slapd> {
    if !Path::new(SLAPD).exists() {
        eprintln!(
            "SKIPPED: {SLAPD} is not installed (apt-get install -y slapd ldap-utils); LDAP login tests did not run"
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path();

    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "flowgate test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("server parameters");
    server_params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let server_cert = server_params.signed_by(&server_key, &ca).expect("server certificate");
    std::fs::write(path.join("server.pem"), server_cert.pem()).expect("write certificate");
    std::fs::write(path.join("server.key"), server_key.serialize_pem()).expect("write key");
    std::fs::create_dir(path.join("db")).expect("database directory");

    let dir_str = path.display();
    let config = format!(
        "include /etc/ldap/schema/core.schema\n\
         include /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n\
         pidfile {dir_str}/slapd.pid\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         TLSCertificateFile {dir_str}/server.pem\n\
         TLSCertificateKeyFile {dir_str}/server.key\n\
         database mdb\n\
         maxsize 10485760\n\
         suffix \"{BASE}\"\n\
         rootdn \"{ADMIN_DN}\"\n\
         rootpw {ADMIN_PASSWORD}\n\
         directory {dir_str}/db\n\
         access to * by * read\n"
    );
    let config_path = path.join("slapd.conf");
    std::fs::write(&config_path, config).expect("write slapd.conf");
    let ldif_path = path.join("data.ldif");
    std::fs::write(&ldif_path, ldif()).expect("write LDIF");
    let added =
        Command::new(SLAPADD).arg("-f").arg(&config_path).arg("-l").arg(&ldif_path).output().expect("run slapadd");
    assert!(added.status.success(), "slapadd failed: {}", String::from_utf8_lossy(&added.stderr));

    let (ldap_port, ldaps_port) = (free_port(), free_port());
    let child = Command::new(SLAPD)
        .arg("-f")
        .arg(&config_path)
        .arg("-h")
        .arg(format!("ldap://127.0.0.1:{ldap_port}/ ldaps://127.0.0.1:{ldaps_port}/"))
        .args(["-d", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start slapd");
    let slapd = Slapd { child, ldap_port, ldaps_port, ca_pem: ca.pem(), _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", ldap_port)).is_err()
        || TcpStream::connect(("127.0.0.1", ldaps_port)).is_err()
    {
        assert!(Instant::now() < deadline, "slapd did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(slapd)
}

fn attributes() -> LdapAttributes {
    LdapAttributes {
        id_attribute: "uid".to_owned(),
        first_name_attribute: "givenName".to_owned(),
        last_name_attribute: "sn".to_owned(),
        display_name_attribute: "cn".to_owned(),
        nick_name_attribute: String::new(),
        preferred_username_attribute: "uid".to_owned(),
        email_attribute: "mail".to_owned(),
        email_verified_attribute: String::new(),
        phone_attribute: "telephoneNumber".to_owned(),
        phone_verified_attribute: String::new(),
        preferred_language_attribute: "preferredLanguage".to_owned(),
        avatar_url_attribute: String::new(),
        profile_attribute: String::new(),
    }
}

fn provider(server: String, start_tls: bool, root_ca_pem: Option<String>) -> LdapProvider {
    LdapProvider {
        servers: vec![server],
        start_tls,
        tls_verify: true,
        root_ca_pem,
        base_dn: BASE.to_owned(),
        // The root DN may read every attribute, userPassword included: the connector must not pass it on.
        bind_dn: ADMIN_DN.to_owned(),
        bind_password: ADMIN_PASSWORD.to_owned(),
        user_base: format!("ou=people,{BASE}"),
        user_object_classes: vec!["inetOrgPerson".to_owned()],
        user_filters: vec!["uid".to_owned(), "mail".to_owned()],
        timeout: Duration::from_secs(5),
        attributes: attributes(),
    }
}

fn assert_login_failed(result: flowgate_core::Result<flowgate_core::idp::ports::ExternalUser>, what: &str) {
    match result {
        Ok(user) => panic!("{what}: accepted as {user:?}"),
        Err(error) => {
            assert_eq!(error.id(), CONNECTOR_LDAP_FAILED, "{what}: {error}");
            assert_eq!(error.kind(), ErrorKind::FailedPrecondition, "{what}");
            assert_eq!(error.message(), "the user could not be authenticated at the IdP", "{what}");
        }
    }
}

#[tokio::test]
async fn an_empty_password_is_refused_before_any_network() {
    // Nothing listens on port 1: reaching the network would fail as unreachable instead.
    let provider = provider("ldap://127.0.0.1:1".to_owned(), false, None);
    assert_login_failed(connectors().ldap_login(&provider, "alice", "").await, "empty password");
    assert_login_failed(connectors().ldap_login(&provider, "", "secret").await, "empty username");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = free_port();
    let provider = provider(format!("ldap://127.0.0.1:{port}"), false, None);
    let error = connectors().ldap_login(&provider, "alice", "alice-password").await.expect_err("unreachable");
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert_eq!(error.id(), CONNECTOR_UNREACHABLE);
}

#[tokio::test]
async fn plain_ldap_off_loopback_is_refused() {
    let provider = provider("ldap://ldap.example.test:389".to_owned(), false, None);
    assert_login_failed(connectors().ldap_login(&provider, "alice", "alice-password").await, "plain ldap");
}

#[tokio::test]
async fn logins_against_slapd() {
    let Some(slapd) = start_slapd() else { return };
    let connectors = connectors();
    let ldaps = format!("ldaps://127.0.0.1:{}", slapd.ldaps_port);
    let ldap = format!("ldap://127.0.0.1:{}", slapd.ldap_port);
    let ca = Some(slapd.ca_pem.clone());

    // ldaps with the test CA as extra trust anchor: the mapped account, and only the mapped attributes.
    let user = connectors
        .ldap_login(&provider(ldaps.clone(), false, ca.clone()), "alice", "alice-password")
        .await
        .expect("alice logs in over ldaps");
    assert_eq!(user.id, "alice");
    assert_eq!(user.username, "alice");
    assert_eq!(user.profile.given_name.as_deref(), Some("Alice"));
    assert_eq!(user.profile.family_name.as_deref(), Some("Liddell"));
    assert_eq!(user.profile.display_name.as_deref(), Some("Alice Liddell"));
    assert_eq!(user.profile.email.as_deref(), Some("alice@example.test"));
    assert_eq!(user.profile.preferred_language.as_deref(), Some("en"));
    assert!(user.profile.phone.is_none());
    let attributes = user.ldap_attributes.as_ref().expect("LDAP attributes");
    assert_eq!(attributes["mail"], vec!["alice@example.test".to_owned()]);
    assert!(
        !attributes.keys().any(|k| k.eq_ignore_ascii_case("userPassword")),
        "the password hash must not be handed out: {attributes:?}"
    );
    assert!(!user.raw.to_string().contains("alice-password"));
    assert_eq!(user.raw["User"]["uid"][0], "alice");

    // By e-mail (the second filter attribute), over StartTLS.
    let user = connectors
        .ldap_login(&provider(ldap.clone(), true, ca.clone()), "alice@example.test", "alice-password")
        .await
        .expect("alice logs in by mail over StartTLS");
    assert_eq!(user.id, "alice");

    // Plain ldap:// is allowed on loopback.
    connectors
        .ldap_login(&provider(ldap.clone(), false, None), "alice", "alice-password")
        .await
        .expect("plain ldap on loopback");

    // Filter syntax in the username is literal: the odd uid is found, wildcards find nothing.
    let user = connectors
        .ldap_login(&provider(ldaps.clone(), false, ca.clone()), ODD_UID, "odd-password")
        .await
        .expect("the odd uid logs in");
    assert_eq!(user.id, ODD_UID);
    let secured = provider(ldaps.clone(), false, ca.clone());
    for username in ["al*", "*", "alice)(uid=*", "*)(|(uid=*", "alice\0", "o*"] {
        assert_login_failed(connectors.ldap_login(&secured, username, "alice-password").await, username);
    }

    // Wrong password; unknown user; two entries for one username.
    assert_login_failed(connectors.ldap_login(&secured, "alice", "wrong").await, "wrong password");
    assert_login_failed(connectors.ldap_login(&secured, "nobody", "alice-password").await, "unknown user");
    assert_login_failed(connectors.ldap_login(&secured, "shared@example.test", "bob-password").await, "two entries");

    // A wrong service password fails the same way.
    let mut bad_service = secured.clone();
    bad_service.bind_password = "not-it".to_owned();
    assert_login_failed(connectors.ldap_login(&bad_service, "alice", "alice-password").await, "service bind");

    // The test CA is not a public root: without it the certificate is refused (ldaps and StartTLS) ...
    for unverifiable in [provider(ldaps.clone(), false, None), provider(ldap.clone(), true, None)] {
        let what =
            format!("untrusted certificate at {:?} (StartTLS: {})", unverifiable.servers, unverifiable.start_tls);
        assert_login_failed(connectors.ldap_login(&unverifiable, "alice", "alice-password").await, &what);
    }
    // ... unless verification is turned off.
    let mut unverified = provider(ldaps.clone(), false, None);
    unverified.tls_verify = false;
    connectors.ldap_login(&unverified, "alice", "alice-password").await.expect("verification off");

    // The second server answers when the first does not.
    let mut fallback = provider(format!("ldaps://127.0.0.1:{}", free_port()), false, ca.clone());
    fallback.servers.push(ldaps.clone());
    connectors.ldap_login(&fallback, "alice", "alice-password").await.expect("the second server answers");
}
