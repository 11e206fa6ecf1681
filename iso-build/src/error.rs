//! Errors of the ISO builder and installer.

use crate::answer::Problems;

/// Everything that can go wrong in `tandem-iso`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An external command failed; names the stage, the command and its output.
    #[error("stage `{stage}` failed: command `{command}` {status}\n--- output (last lines) ---\n{output}")]
    Command {
        /// Stage name as shown in the progress lines.
        stage: String,
        /// The command line.
        command: String,
        /// Exit status in words.
        status: String,
        /// Last lines of its stdout and stderr.
        output: String,
    },
    /// A stage failed for a reason other than a command.
    #[error("stage `{stage}` failed: {message}")]
    Stage {
        /// Stage name.
        stage: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The answer file is not valid.
    #[error("answer file {origin} is not valid; nothing was written to any disk.\n{problems}")]
    Answer {
        /// Where the file came from.
        origin: String,
        /// Every problem found.
        problems: Problems,
    },
    /// I/O on a named path.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with context.
pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
