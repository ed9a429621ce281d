//! `herald.toml`: arbitrary text read as `Config::load` reads the file (built-in defaults, then
//! the TOML on top, extracted with figment), then what start-up does with the result. Besides
//! not panicking:
//! - a configuration that loads gives a worker count of at least one, or an error (never a
//!   panic or zero);
//! - each `[[streams]]` table gives a spec whose path defaults to `/<name>`, and creating the
//!   streams as start-up does (validation, the reserved paths, names and paths taken) either
//!   creates each one or says why not;
//! - the loaded configuration, layered again as defaults, extracts to itself.
//!
//! herald-server itself is not a dependency: with its web, database and Redis stack it is
//! some 385 crates to build with sanitizers, where this fuzz crate needs under 80. Its
//! configuration module is compiled here as it is, from its own source file (it depends on
//! figment, serde and herald-core only).
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/server/src/config.rs"]
mod config;

use std::sync::OnceLock;

use config::Config;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use herald_core::stream::{StreamError, Streams};
use libfuzzer_sys::fuzz_target;

/// Throttled and batched streams start a timer task.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Some of the paths herald-server serves itself (`app::is_reserved_path`).
fn reserved(path: &str) -> bool {
    path == "/ws" || path.starts_with("/api")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract::<Config>();
    let Ok(config) = loaded else {
        return;
    };
    if let Ok(n) = config.worker_threads() {
        assert!(n >= 1);
    }

    let again = Figment::from(Serialized::defaults(&config)).extract::<Config>();
    assert_eq!(again.as_ref().ok(), Some(&config), "{again:?}");

    let rt = runtime();
    let _entered = rt.enter();
    let streams = Streams::new(reserved);
    for declared in &config.streams {
        let spec = declared.spec();
        assert_eq!(spec.name, declared.name);
        match &declared.path {
            Some(p) => assert_eq!(&spec.path, p),
            None => assert_eq!(spec.path, format!("/{}", declared.name)),
        }
        match streams.create(spec.clone()) {
            Ok(s) => assert_eq!(s.spec(), &spec),
            Err(StreamError::NameTaken(_) | StreamError::PathTaken(..)) => {
                assert!(
                    config
                        .streams
                        .iter()
                        .filter(|s| s.name == spec.name || s.spec().path == spec.path)
                        .count()
                        > 1
                );
            }
            Err(_) => {}
        }
    }
    streams.shutdown();
    drop(streams);
    // Lets the aborted timers finish.
    rt.block_on(tokio::task::yield_now());
});
