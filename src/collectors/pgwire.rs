//! A small PostgreSQL client: the frontend/backend protocol 3.0 with the
//! simple query protocol only, which is all a check needs (text values, no
//! parameters).
//!
//! In: a [`DbUrl`]. Out: rows of text values. Authentication: SCRAM-SHA-256
//! (Heroku Postgres and PostgreSQL 14+ by default), cleartext, or none;
//! md5 is refused with a one-line error. TLS through `SSLRequest`, as libpq
//! does, when the URL's `sslmode` asks for it.
//!
//! Why hand-written: `tokio-postgres` brings its type system, SASLprep's
//! Unicode tables and a second copy of the TLS glue, where this needs the
//! crates the forwarder already links (ring, rustls, base64). Deviation:
//! the password is not SASLprep-normalised (Heroku's are ASCII, for which
//! SASLprep changes nothing).
//!
//! Must never: put the password in an error, allocate more than
//! [`MAX_MESSAGE`] for one message, or keep more than [`MAX_ROWS`] rows.

use std::io;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use super::net::{self, Stream};
use crate::config::{DbUrl, Tls};

/// The largest backend message read (a row of a check's query is far smaller).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Rows kept per query; the rest are read and dropped.
pub const MAX_ROWS: usize = 1000;

/// What went wrong, in one line with no password in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// Could not reach the server, or the connection broke.
    #[error("{0}")]
    Io(String),
    /// The server said no: SQLSTATE and message.
    #[error("{message} (SQLSTATE {code})")]
    Server {
        /// SQLSTATE, e.g. `28P01` for a wrong password.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server spoke something we cannot follow.
    #[error("{0}")]
    Protocol(String),
}

impl PgError {
    /// Whether the credentials were refused (`28P01`, `28000`).
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Server { code, .. } if code.starts_with("28"))
    }
}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> Self {
        Self::Io(if e.kind() == io::ErrorKind::UnexpectedEof {
            "the server closed the connection".to_owned()
        } else {
            e.to_string()
        })
    }
}

/// One result row: text values, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// An open, authenticated connection.
pub struct Client {
    io: BufReader<Stream>,
    buf: Vec<u8>,
}

/// Startup parameters beyond user and database: the name users see in
/// `pg_stat_activity`, and a statement timeout so a check never holds a
/// lock or a backend for long.
const STARTUP: &[(&str, &str)] = &[
    ("application_name", "dynostat"),
    ("options", "-c statement_timeout=5000 -c lock_timeout=1000"),
    ("client_encoding", "UTF8"),
];

impl Client {
    /// Connects, negotiates TLS as `url.tls` says, and authenticates.
    pub async fn connect(url: &DbUrl) -> Result<Self, PgError> {
        let mut tcp = net::connect_tcp(&url.host, url.port).await?;
        let stream = if url.tls == Tls::Off {
            Stream::Plain(tcp)
        } else {
            // SSLRequest: length 8, code 80877103.
            tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            match (answer[0], url.tls) {
                (b'S', _) => net::start_tls(tcp, &url.host).await?,
                (b'N', Tls::Prefer) => Stream::Plain(tcp),
                (b'N', _) => {
                    return Err(PgError::Protocol(
                        "the server does not offer TLS, which sslmode=require needs; add ?sslmode=disable to the URL only for a local server".to_owned(),
                    ))
                }
                _ => return Err(PgError::Protocol("unexpected answer to the TLS request".to_owned())),
            }
        };
        let mut c = Self {
            io: BufReader::new(stream),
            buf: Vec::with_capacity(1024),
        };
        c.startup(url).await?;
        Ok(c)
    }

    async fn startup(&mut self, url: &DbUrl) -> Result<(), PgError> {
        let mut body = Vec::with_capacity(128);
        body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
        for (k, v) in [
            ("user", url.user.as_str()),
            ("database", url.database.as_str()),
        ]
        .into_iter()
        .chain(STARTUP.iter().copied())
        {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        self.send(None, &body).await?;
        let mut scram: Option<Scram> = None;
        loop {
            let tag = self.recv().await?;
            match tag {
                b'R' => {
                    let code = self.int32(0)?;
                    match code {
                        0 => {}
                        3 => {
                            let mut p = url.password.expose().as_bytes().to_vec();
                            p.push(0);
                            self.send(Some(b'p'), &p).await?;
                        }
                        5 => {
                            return Err(PgError::Protocol(
                                "the server asks for md5 password authentication, which dynostat does not speak; \
                                 use SCRAM-SHA-256 (password_encryption = scram-sha-256), as Heroku Postgres does"
                                    .to_owned(),
                            ))
                        }
                        10 => {
                            let mechanisms = &self.buf[4..];
                            if !mechanisms
                                .split(|b| *b == 0)
                                .any(|m| m == b"SCRAM-SHA-256")
                            {
                                return Err(PgError::Protocol(
                                    "the server offers no SASL mechanism dynostat speaks (SCRAM-SHA-256)".to_owned(),
                                ));
                            }
                            let s = Scram::new()?;
                            let first = s.client_first();
                            let mut msg = b"SCRAM-SHA-256\0".to_vec();
                            msg.extend_from_slice(&u32_len(first.len())?.to_be_bytes());
                            msg.extend_from_slice(first.as_bytes());
                            self.send(Some(b'p'), &msg).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| proto("SASL continue before SASL start"))?;
                            let server_first = std::str::from_utf8(&self.buf[4..])
                                .map_err(|_| proto("SCRAM server message is not UTF-8"))?
                                .to_owned();
                            let fin = s.client_final(&server_first, url.password.expose())?;
                            self.send(Some(b'p'), fin.as_bytes()).await?;
                        }
                        12 => {
                            let s = scram.as_ref().ok_or_else(|| proto("SASL final before SASL start"))?;
                            s.verify_server(&self.buf[4..])?;
                        }
                        other => {
                            return Err(PgError::Protocol(format!(
                                "the server asks for an authentication method dynostat does not speak (code {other})"
                            )))
                        }
                    }
                }
                b'E' => return Err(self.server_error()),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse, NegotiateProtocolVersion
                _ => {}
            }
        }
    }

    /// Runs one statement; returns its rows (at most [`MAX_ROWS`]).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        self.send(Some(b'Q'), &q).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await? {
                b'D' if rows.len() < MAX_ROWS => rows.push(self.data_row()?),
                b'E' => error = Some(self.server_error()),
                b'Z' => break,
                // RowDescription, CommandComplete, EmptyQueryResponse, notices
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Says goodbye (Terminate), so the server logs no broken connection.
    pub async fn close(mut self) {
        let _ = self.send(Some(b'X'), &[]).await;
        let _ = self.io.get_mut().shutdown().await;
    }

    async fn send(&mut self, tag: Option<u8>, body: &[u8]) -> Result<(), PgError> {
        let mut msg = Vec::with_capacity(body.len() + 5);
        if let Some(t) = tag {
            msg.push(t);
        }
        msg.extend_from_slice(&u32_len(body.len() + 4)?.to_be_bytes());
        msg.extend_from_slice(body);
        self.io.get_mut().write_all(&msg).await?;
        self.io.get_mut().flush().await?;
        Ok(())
    }

    /// Reads one message into `self.buf`; returns its type.
    async fn recv(&mut self) -> Result<u8, PgError> {
        let tag = self.io.read_u8().await?;
        let len = self.io.read_u32().await? as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            return Err(proto("a message longer than dynostat reads (1 MiB)"));
        }
        self.buf.resize(len - 4, 0);
        self.io.read_exact(&mut self.buf).await?;
        Ok(tag)
    }

    fn int32(&self, at: usize) -> Result<u32, PgError> {
        self.buf
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| proto("a message too short"))
    }

    fn data_row(&self) -> Result<Row, PgError> {
        let b = &self.buf;
        let n = b
            .get(0..2)
            .map(|x| u16::from_be_bytes([x[0], x[1]]) as usize)
            .ok_or_else(|| proto("a short row"))?;
        let mut at = 2;
        let mut row = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.int32(at)?;
            at += 4;
            if len == u32::MAX {
                row.push(None);
                continue;
            }
            let end = at + len as usize;
            let v = b
                .get(at..end)
                .ok_or_else(|| proto("a row shorter than it says"))?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
            at = end;
        }
        Ok(row)
    }

    fn server_error(&self) -> PgError {
        let mut code = String::new();
        let mut message = String::new();
        for field in self.buf.split(|b| *b == 0) {
            if let Some((&kind, text)) = field.split_first() {
                match kind {
                    b'C' => code = String::from_utf8_lossy(text).into_owned(),
                    b'M' => message = String::from_utf8_lossy(text).into_owned(),
                    _ => {}
                }
            }
        }
        PgError::Server { code, message }
    }
}

fn proto(what: &str) -> PgError {
    PgError::Protocol(what.to_owned())
}

fn u32_len(n: usize) -> Result<u32, PgError> {
    u32::try_from(n).map_err(|_| proto("a message too long to send"))
}

/// The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), without channel
/// binding (`n,,`), as PostgreSQL expects it: the user name is empty (the
/// startup message's counts).
struct Scram {
    nonce: String,
    /// `client-first-bare,server-first,client-final-without-proof`, once known.
    auth_message: String,
    salted: Vec<u8>,
}

/// PBKDF2 iterations accepted at most: PostgreSQL's default is 4096; a
/// server asking for millions would cost seconds of CPU per connection.
const MAX_ITERATIONS: u32 = 100_000;

impl Scram {
    fn new() -> Result<Self, PgError> {
        let mut raw = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| proto("no randomness for the SCRAM nonce"))?;
        Ok(Self {
            nonce: base64::engine::general_purpose::STANDARD.encode(raw),
            auth_message: String::new(),
            salted: Vec::new(),
        })
    }

    fn client_first(&self) -> String {
        format!("n,,n=,r={}", self.nonce)
    }

    fn client_final(&mut self, server_first: &str, password: &str) -> Result<String, PgError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in server_first.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = b64.decode(v).ok(),
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(proto(
                "a SCRAM server message without nonce, salt or iterations",
            ));
        };
        if !nonce.starts_with(&self.nonce) || iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(proto("a SCRAM server message dynostat does not accept"));
        }
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations).ok_or_else(|| proto("zero iterations"))?,
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("n=,r={},{server_first},{without_proof}", self.nonce);
        let proof = client_proof(&salted, &self.auth_message);
        self.salted = salted.to_vec();
        Ok(format!("{without_proof},p={}", b64.encode(proof)))
    }

    /// Checks the server's signature: a server that does not know the
    /// password cannot make it.
    fn verify_server(&self, server_final: &[u8]) -> Result<(), PgError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| proto("SCRAM final is not UTF-8"))?;
        let Some(v) = text.strip_prefix("v=") else {
            return Err(proto("the server refused the SCRAM proof"));
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.salted);
        let server_key = ring::hmac::sign(&key, b"Server Key");
        let expected = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, server_key.as_ref()),
            self.auth_message.as_bytes(),
        );
        let got = base64::engine::general_purpose::STANDARD
            .decode(v.trim_end_matches('\0'))
            .map_err(|_| proto("a SCRAM server signature that is not base64"))?;
        if got == expected.as_ref() {
            Ok(())
        } else {
            Err(proto(
                "the server's SCRAM signature is wrong: it does not know the password",
            ))
        }
    }
}

/// SCRAM's ClientProof (RFC 5802): ClientKey XOR HMAC(H(ClientKey), AuthMessage).
fn client_proof(salted: &[u8], auth_message: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, salted);
    let client_key = ring::hmac::sign(&key, b"Client Key");
    let stored = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
    let sig = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, stored.as_ref()),
        auth_message.as_bytes(),
    );
    client_key
        .as_ref()
        .iter()
        .zip(sig.as_ref())
        .map(|(a, b)| a ^ b)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example, with PostgreSQL's empty user name
    /// the auth message differs, so check the RFC's values through the same
    /// arithmetic: the proof for user "user", password "pencil".
    #[test]
    fn scram_sha_256_matches_rfc_7677() {
        let mut s = Scram {
            nonce: "rOprNGfwEbeRWgbNEkqO".to_owned(),
            auth_message: String::new(),
            salted: Vec::new(),
        };
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        // The RFC's client-first-bare names the user; PostgreSQL sends n=.
        let fin = s.client_final(server_first, "pencil").expect("valid");
        assert!(fin.starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="));
        // With the RFC's user name in the auth message, the proof is the RFC's.
        s.auth_message = format!(
            "n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first},c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        );
        let proof = client_proof(&s.salted, &s.auth_message);
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(s
            .verify_server(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_ok());
        assert!(s.verify_server(b"v=AAAA").is_err());
        assert!(s.verify_server(b"e=invalid-proof").is_err());
    }
}
