//! Connections for the checks: a name resolved by hickory through
//! [`crate::forward::dns`] (not the C library, so the static binary
//! resolves on every stack; the forwarder's resolver type), TCP with a
//! deadline, and TLS on rustls with the certificate not verified, as the
//! official buildpack configures Heroku's databases (`sslmode=require`,
//! `ssl_cert_reqs: 0`): their certificates are self-signed per server.
//! The encryption is real; the server's identity is not checked (the same
//! trade as `sslmode=require` in libpq).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The checks' resolver: the forwarder's type, built once on this thread.
static DNS: std::sync::LazyLock<crate::forward::dns::Dns> =
    std::sync::LazyLock::new(crate::forward::dns::Dns::default);

/// How long a connection (resolve, TCP, TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A plain or TLS stream.
pub enum Stream {
    /// TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the session state is large).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Resolves `host` (an address is taken as it is) and connects to the first
/// address that answers, all within [`CONNECT_TIMEOUT`].
pub async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let work = async {
        let addrs: Vec<std::net::IpAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) if host == "localhost" => vec![std::net::IpAddr::from([127, 0, 0, 1])],
            Err(_) => DNS.lookup(host).await?,
        };
        let mut last = io::Error::other(format!("{host} has no address"));
        for ip in addrs {
            match TcpStream::connect((ip, port)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting took over 5 s"))?
}

/// TLS over `tcp`, the certificate not verified (see the module doc).
pub async fn start_tls(tcp: TcpStream, host: &str) -> io::Result<Stream> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| io::Error::other(format!("{host} is not a name TLS can address")))?;
    let connector = tokio_rustls::TlsConnector::from(unverified_config());
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake took over 5 s")
        })??;
    Ok(Stream::Tls(Box::new(tls)))
}

/// One client configuration for every check, built once.
fn unverified_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(NoServerIdentity(Arc::clone(&provider)));
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            });
        Arc::new(config.unwrap_or_else(|_| {
            // Only an inconsistent provider fails above; ring's is not.
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoServerIdentity(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))))
                .with_no_client_auth()
        }))
    }))
}

/// Accepts any certificate, as `sslmode=require` does; the handshake's
/// signatures are still checked against the certificate's key.
#[derive(Debug)]
struct NoServerIdentity(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoServerIdentity {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
