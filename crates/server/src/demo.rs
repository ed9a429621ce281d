//! `herald serve --demo`: the data behind the demo apps under `/examples/`. Stock prices and
//! news are simulated (as in seeds 001 and 002); system stats are this process's real figures.
//! Everything goes through ordinary streams, so the pages use `herald.js` exactly as any
//! application would, and seed 002's own pages (`EventSource("/stock-prices")`) work too.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use herald_core::stream::{Stream, StreamError, StreamSpec};
use serde_json::{Value, json};

use crate::app::App;
use crate::config::Config;

/// The chat demo's room, public with `--demo` so that anonymous visitors can talk.
pub const ROOM: &str = "demo";
/// The editor demos' documents (`/examples/editor`, `/examples/yjs`), public with `--demo` so
/// that anonymous visitors can edit them.
pub const DOCUMENTS: [&str; 2] = ["document:demo", "yjs:demo"];

const STOCK_EVERY: Duration = Duration::from_millis(500);
const NEWS_EVERY: Duration = Duration::from_secs(5);
const STATS_EVERY: Duration = Duration::from_secs(1);
/// A new stats subscriber gets the last minute, so its chart starts filled.
const STATS_HISTORY: usize = 60;
const NEWS_HISTORY: usize = 20;
/// Largest move of one tick, as a fraction of the price (seed 001: ±2 % every 2 s; smaller
/// and more often here, so the page moves without jumping).
const VOLATILITY: f64 = 0.005;

/// (symbol, name, opening price): seed 002's symbols at seed 001's prices.
const STOCKS: [(&str, &str, f64); 5] = [
    ("AAPL", "Apple Inc.", 150.25),
    ("GOOGL", "Alphabet Inc.", 2800.50),
    ("MSFT", "Microsoft Corp.", 300.75),
    ("AMZN", "Amazon.com Inc.", 3200.00),
    ("TSLA", "Tesla Inc.", 800.00),
];

/// (category, headline): seed 001's headlines, and a few more so the feed does not repeat at
/// once.
const NEWS: [(&str, &str); 8] = [
    ("tech", "Breaking: Major tech announcement today"),
    ("markets", "Stock market reaches new high"),
    ("business", "New product launch creates excitement"),
    ("economy", "Economic indicators show positive growth"),
    ("tech", "Open-source real-time servers gain ground"),
    ("markets", "Chipmakers rally on strong demand"),
    ("economy", "Central bank holds rates steady"),
    ("business", "Start-up closes record funding round"),
];

/// Adds the demo room and documents to the public rooms (keeping the configured ones).
pub fn open_room(config: &mut Config) {
    for room in std::iter::once(ROOM).chain(DOCUMENTS) {
        if config.demo && !config.public_rooms.iter().any(|r| r == room) {
            config.public_rooms.push(room.to_owned());
        }
    }
}

/// Feeds the demo streams until aborted.
pub async fn run(app: Arc<App>) {
    let Feeds {
        stocks,
        news,
        stats,
    } = match Feeds::create(&app) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "demo streams could not be created; the demo is not fed");
            return;
        }
    };
    let mut market = Market::new();
    // Every symbol once at start, so a new ticker shows all of them at once.
    for i in 0..STOCKS.len() {
        stocks.publish(&market.quote(i));
    }
    let mut headlines = NEWS.iter().cycle().enumerate();
    let mut stats_feed = StatsFeed::new(app.hub.head());
    let mut stock_tick = tokio::time::interval(STOCK_EVERY);
    let mut news_tick = tokio::time::interval(NEWS_EVERY);
    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    loop {
        tokio::select! {
            _ = stock_tick.tick() => {
                let i = market.next_symbol();
                market.step(i);
                stocks.publish(&market.quote(i));
            }
            _ = news_tick.tick() => {
                let (n, (category, headline)) = headlines.next().expect("endless");
                news.publish(&json!({
                    "id": format!("news-{}", n + 1),
                    "headline": headline,
                    "category": category,
                    "timestamp": now(),
                }));
            }
            _ = stats_tick.tick() => publish_stats(&app, &stats, &mut stats_feed),
        }
    }
}

/// The demo's streams; one declared in the configuration under the same name is fed as it is.
struct Feeds {
    stocks: Arc<Stream>,
    news: Arc<Stream>,
    stats: Arc<Stream>,
}

impl Feeds {
    fn create(app: &App) -> Result<Self, StreamError> {
        let stream = |name: &str, history: usize| {
            app.streams.get(name).map_or_else(
                || {
                    app.streams
                        .create(StreamSpec::new(name, None, Some(history), 0, 0))
                },
                Ok,
            )
        };
        Ok(Self {
            stocks: stream("stock-prices", STOCKS.len())?,
            news: stream("news", NEWS_HISTORY)?,
            stats: stream("system-stats", STATS_HISTORY)?,
        })
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A random walk per symbol, with the change since the opening price.
struct Market {
    prices: Vec<f64>,
    rng: XorShift,
    /// The symbol whose price moves next.
    turn: usize,
}

impl Market {
    fn new() -> Self {
        Self {
            prices: STOCKS.iter().map(|s| s.2).collect(),
            rng: XorShift::new(),
            turn: 0,
        }
    }

    /// Symbols take turns, so the stream's history (as many quotes as symbols) always holds
    /// every symbol's latest price: a ticker opened at any time shows all of them at once.
    fn next_symbol(&mut self) -> usize {
        let i = self.turn;
        self.turn = (i + 1) % STOCKS.len();
        i
    }

    fn step(&mut self, i: usize) {
        let change = (self.rng.next_f64() - 0.5) * 2.0 * VOLATILITY;
        self.prices[i] *= 1.0 + change;
    }

    /// Seed 002's message (`symbol`, `name`, `price`, `timestamp`) with seed 001's `change`.
    fn quote(&self, i: usize) -> Value {
        let (symbol, name, open) = STOCKS[i];
        let price = self.prices[i];
        json!({
            "symbol": symbol,
            "name": name,
            "price": (price * 100.0).round() / 100.0,
            "change": ((price - open) * 100.0).round() / 100.0,
            "changePercent": ((price / open - 1.0) * 10_000.0).round() / 100.0,
            "timestamp": now(),
        })
    }
}

/// xorshift64*: simulated prices need no cryptographic randomness, only a little variety.
struct XorShift(u64);

impl XorShift {
    fn new() -> Self {
        // Seeded from the OS generator (through a v4 UUID), never zero.
        Self((uuid::Uuid::new_v4().as_u128() as u64) | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The previous sample, to turn the log's head into events per second.
struct StatsFeed {
    head: u64,
    at: tokio::time::Instant,
}

impl StatsFeed {
    fn new(head: u64) -> Self {
        Self {
            head,
            at: tokio::time::Instant::now(),
        }
    }
}

/// The same figures as `/api/dashboard/live-data`, for anyone to read: no user data in them.
fn publish_stats(app: &App, stream: &Stream, previous: &mut StatsFeed) {
    let hub = app.hub.stats();
    let process = app.process.lock().sample();
    let head = app.hub.head();
    let now_at = tokio::time::Instant::now();
    let secs = now_at.duration_since(previous.at).as_secs_f64().max(1e-3);
    let events_per_second = head.saturating_sub(previous.head) as f64 / secs;
    *previous = StatsFeed { head, at: now_at };
    stream.publish(&json!({
        "timestamp": now(),
        "cpuPercent": process.cpu_percent,
        "cores": process.cpu_cores,
        "rssBytes": process.rss_bytes,
        "connections": hub.total,
        "connectionsByType": hub.by_type,
        "uniqueUsers": hub.unique_users,
        "subscriptions": hub.subscriptions,
        "eventsPerSecond": (events_per_second * 10.0).round() / 10.0,
        "lastSeq": head,
        "uptimeSecs": app.started.elapsed().as_secs(),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_room_is_added_once_to_the_public_rooms() {
        let mut config = Config {
            demo: true,
            public_rooms: vec!["lobby".into()],
            ..Config::default()
        };
        open_room(&mut config);
        open_room(&mut config);
        assert_eq!(
            config.public_rooms,
            ["lobby", ROOM, DOCUMENTS[0], DOCUMENTS[1]]
        );
        let mut plain = Config::default();
        open_room(&mut plain);
        assert!(plain.public_rooms.is_empty());
    }

    #[test]
    fn prices_walk_within_the_volatility() {
        let mut market = Market::new();
        for _ in 0..1000 {
            let i = market.next_symbol();
            let before = market.prices[i];
            market.step(i);
            assert!((market.prices[i] / before - 1.0).abs() <= VOLATILITY);
        }
        let turns: std::collections::HashSet<usize> =
            (0..STOCKS.len()).map(|_| market.next_symbol()).collect();
        assert_eq!(
            turns.len(),
            STOCKS.len(),
            "any run of quotes as long as the history has every symbol"
        );
        let quote = market.quote(0);
        assert_eq!(quote["symbol"], "AAPL");
        assert!(quote["price"].as_f64().unwrap() > 0.0);
    }
}
