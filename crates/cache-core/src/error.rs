//! The one error type of the project.

use std::fmt;
use std::sync::Arc;

/// What went wrong, coarsely. Match on this, not on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A key, prefix or namespace was rejected (empty, too long, forbidden characters).
    InvalidKey,
    /// A configuration value is invalid (TTL order, sizes, builder misuse).
    InvalidConfig,
    /// A connection URL could not be understood.
    InvalidUrl,
    /// The remote store could not be reached or the connection broke.
    Connection,
    /// The remote store refused our credentials.
    Auth,
    /// An operation took longer than its timeout.
    Timeout,
    /// The remote store answered with an error.
    Remote,
    /// A value could not be encoded.
    Encode,
    /// Bytes could not be decoded into a value.
    Decode,
    /// A value is larger than the configured maximum; nothing was sent.
    ValueTooLarge,
    /// The user's loader returned an error.
    Loader,
    /// The user's loader panicked.
    LoaderPanicked,
    /// The user's writer (write-through / write-behind to the source) returned an error.
    Writer,
    /// A bounded queue is full and its policy is to refuse (write-behind).
    QueueFull,
    /// The loader said the key does not exist (negative cache hit or absent answer).
    NotFound,
    /// The cache or one of its background tasks has shut down.
    Closed,
    /// The circuit breaker is open: the remote tier is skipped for now.
    CircuitOpen,
}

impl ErrorKind {
    /// A short, stable, lowercase name (used in logs and metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::Connection => "connection",
            ErrorKind::Auth => "auth",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Remote => "remote",
            ErrorKind::Encode => "encode",
            ErrorKind::Decode => "decode",
            ErrorKind::ValueTooLarge => "value_too_large",
            ErrorKind::Loader => "loader",
            ErrorKind::LoaderPanicked => "loader_panicked",
            ErrorKind::Writer => "writer",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Closed => "closed",
            ErrorKind::CircuitOpen => "circuit_open",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every fallible operation of the cache.
///
/// Cheap to clone (one load's error reaches every waiter of that load). Messages never
/// contain passwords or tokens.
///
/// One pointer wide (its parts live behind one `Arc`), so a `Result<Option<Arc<V>>>` is two
/// words: an L1 hit answered through [`crate::Cache::get`] moves and drops little.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: Box<str>,
    source: Option<Source>,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into().into_boxed_str(),
                source: None,
            }),
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Arc::make_mut(&mut self.inner).source = Some(Arc::new(source));
        self
    }

    /// Attach a boxed underlying cause.
    pub fn with_boxed_source(mut self, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Arc::make_mut(&mut self.inner).source = Some(Arc::from(source));
        self
    }

    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message, without the source chain.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// True when trying again later may succeed (network trouble, timeouts, an open breaker,
    /// a failing loader); false for errors that will repeat (bad keys, bad config, oversize).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Connection
                | ErrorKind::Timeout
                | ErrorKind::Remote
                | ErrorKind::Loader
                | ErrorKind::LoaderPanicked
                | ErrorKind::Writer
                | ErrorKind::QueueFull
                | ErrorKind::CircuitOpen
        )
    }

    /// An error for a user loader that failed.
    pub fn loader(source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        let message = format!("loader failed: {source}");
        Error::new(ErrorKind::Loader, message).with_boxed_source(source)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.inner.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_kinds() {
        assert!(Error::new(ErrorKind::Timeout, "t").is_transient());
        assert!(Error::new(ErrorKind::Connection, "c").is_transient());
        assert!(!Error::new(ErrorKind::ValueTooLarge, "v").is_transient());
        assert!(!Error::new(ErrorKind::InvalidUrl, "u").is_transient());
    }

    #[test]
    fn an_error_is_one_pointer_and_keeps_its_source() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<Option<Arc<String>>>>(),
            2 * std::mem::size_of::<usize>()
        );
        let shared = Error::new(ErrorKind::Remote, "r");
        let e = shared
            .clone()
            .with_source(std::io::Error::other("underlying"));
        assert!(std::error::Error::source(&shared).is_none());
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string()),
            Some("underlying".to_owned())
        );
        assert_eq!(e.kind(), ErrorKind::Remote);
    }

    #[test]
    fn display_has_kind_and_message() {
        let e = Error::new(ErrorKind::InvalidKey, "key is empty");
        assert_eq!(e.to_string(), "invalid_key: key is empty");
    }
}
