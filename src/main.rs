//! The `streamherd` binary: the command line with the built-in source and
//! sink kinds.

use streamherd_actors::sinks::SinkRegistry;
use streamherd_actors::source::SourceRegistry;

fn main() {
    streamherd::cli::main(SourceRegistry::builtin(), SinkRegistry::builtin())
}
