//! Permissive TLS on the gRPC port, as Apache's proxy serves it: each
//! connection is TLS when its first byte is a TLS handshake record (0x16),
//! plaintext HTTP/2 otherwise. The official clients differ: the Go client
//! always speaks TLS, the Java client does by default, the Node.js and
//! Python ones do not; all of them skip certificate verification unless
//! told otherwise, so a self-signed certificate made at start serves when
//! no `tlsServerCertPath` / `tlsServerKeyPath` are configured.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;
/// A connection must show its first byte, and finish a TLS handshake,
/// within this.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being sniffed or handshaking at once; more wait to be
/// looked at (the accept backlog holds them).
const MAX_PENDING: usize = 512;

/// Why the TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} holds no {what}")]
    Missing { path: String, what: &'static str },
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("bad certificate or key: {0}")]
    Config(#[from] rustls::Error),
}

/// The server side of TLS for the gRPC port.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl Tls {
    /// A certificate chain and private key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let bad = |p: &Path, e: rustls::pki_types::pem::Error| TlsError::Read {
            path: p.display().to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(cert, e))?;
        if certs.is_empty() {
            return Err(TlsError::Missing {
                path: cert.display().to_string(),
                what: "certificate",
            });
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::Missing {
                path: key.display().to_string(),
                what: "private key",
            },
            e => bad(key, e),
        })?;
        Self::new(certs, key)
    }

    /// A certificate for `localhost` made now, signed by itself.
    pub fn self_signed() -> Result<Tls, TlsError> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        let cert = made.cert.der().clone();
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        Self::new(vec![cert], key)
    }

    fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        // gRPC runs on HTTP/2 only.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// A gRPC connection, over TLS or not.
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl MaybeTls {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl Connected for MaybeTls {
    // The same for both, so handlers find the addresses one way.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            MaybeTls::Plain(s) => s.connect_info(),
            MaybeTls::Tls(s) => s.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Accepts on `listener` and yields each connection once it is known to be
/// plaintext or has finished its TLS handshake (`tls` = None: plaintext
/// only). Sniffing and handshakes run off the accept loop, bounded; a
/// connection that shows nothing in time, or fails its handshake, is
/// dropped with a debug line (a port scanner is no event).
pub fn incoming(
    listener: TcpListener,
    tls: Option<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<MaybeTls>> {
    let (tx, rx) = mpsc::channel(64);
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = stream.set_nodelay(true);
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let conn = tokio::time::timeout(FIRST_BYTES_TIMEOUT, classify(stream, tls)).await;
                match conn {
                    Ok(Ok(c)) => {
                        let _ = tx.send(Ok(c)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "gRPC connection dropped before HTTP/2")
                    }
                    Err(_) => tracing::debug!(%peer, "gRPC connection sent nothing in time"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn classify(stream: TcpStream, tls: Option<Tls>) -> io::Result<MaybeTls> {
    let Some(tls) = tls else {
        return Ok(MaybeTls::Plain(stream));
    };
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before sending anything",
        ));
    }
    if first[0] != TLS_HANDSHAKE {
        return Ok(MaybeTls::Plain(stream));
    }
    let s = tls.acceptor.accept(stream).await?;
    Ok(MaybeTls::Tls(Box::new(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::client::danger::{
        HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
    };
    use tokio_rustls::rustls::pki_types::{ServerName, UnixTime};
    use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

    /// What the official clients do: accept any certificate.
    #[derive(Debug)]
    struct AnyCert;

    impl ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[tokio::test]
    async fn tls_and_plaintext_share_the_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = incoming(listener, Some(Tls::self_signed().unwrap()));

        // Plaintext: the bytes arrive as sent.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut got = match conns.next().await.unwrap().unwrap() {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(_) => panic!("plaintext taken for TLS"),
        };
        let mut buf = [0u8; 14];
        got.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PRI * HTTP/2.0");

        // TLS with ALPN h2, certificate not verified (as the clients do).
        let mut cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert))
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            s.write_all(b"hello").await.unwrap();
            s.flush().await.unwrap();
            s
        });
        let mut tls = match conns.next().await.unwrap().unwrap() {
            MaybeTls::Tls(s) => s,
            MaybeTls::Plain(_) => panic!("TLS taken for plaintext"),
        };
        let _keep = client.await.unwrap();
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn a_silent_or_broken_connection_does_not_block_others() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = incoming(listener, Some(Tls::self_signed().unwrap()));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut broken = TcpStream::connect(addr).await.unwrap();
        broken
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x02, 0xff, 0xff])
            .await
            .unwrap();
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"x").await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), conns.next())
            .await
            .unwrap();
        assert!(matches!(next, Some(Ok(MaybeTls::Plain(_)))));
    }

    #[test]
    fn pem_files_load_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, made.cert.pem()).unwrap();
        std::fs::write(&k, made.signing_key.serialize_pem()).unwrap();
        assert!(Tls::from_pem_files(&c, &k).is_ok());
        std::fs::write(&k, "not a key").unwrap();
        let err = Tls::from_pem_files(&c, &k).err().unwrap().to_string();
        assert!(err.contains("k.pem"), "{err}");
        let err = Tls::from_pem_files(&dir.join("none.pem"), &k)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("none.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
