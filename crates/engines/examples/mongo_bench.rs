//! The peers of `bench/mongo.sh`, on the same official driver Stowage uses:
//!
//! * `load URI N COLLS THREADS [FIRST]`: N documents of ~1 KB (ids FIRST
//!   on; deterministic,
//!   semi-random text, so compression has real work) into COLLS collections
//!   of database `bench`, with parallel `insertMany` of 1000 documents:
//!   the restore peer ("plain parallel insertMany of the same documents").
//! * `read URI THREADS [OUT]`: reads every document of every collection of
//!   every user database once, THREADS collections at a time, as raw BSON
//!   (never decoded), into nothing or into OUT: the backup's limit.
//! * `touch URI EVERY`: changes one field of every EVERY-th document.
//! * `sum URI`: per collection, its documents and a hash of their raw BSON
//!   in `_id` order (to check a restore against its source).
//!
//! Prints one line: what it did, documents, bytes, seconds.

use mongodb::bson::{RawDocumentBuf, doc, rawdoc};
use mongodb::sync::Client;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const WORDS: [&str; 32] = [
    "order",
    "customer",
    "shipped",
    "pending",
    "invoice",
    "berlin",
    "paris",
    "lisbon",
    "tokyo",
    "blue",
    "green",
    "large",
    "small",
    "express",
    "standard",
    "refund",
    "credit",
    "debit",
    "warehouse",
    "north",
    "south",
    "east",
    "west",
    "priority",
    "note",
    "gift",
    "wrap",
    "return",
    "damaged",
    "ok",
    "review",
    "stock",
];

/// Document `i`: the same for every run, ~1 KB.
fn document(i: u64) -> RawDocumentBuf {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = String::with_capacity(900);
    while text.len() < 850 {
        let r = next();
        text.push_str(WORDS[(r % 32) as usize]);
        text.push(' ');
        if r % 7 == 0 {
            text.push_str(&(r % 100_000).to_string());
            text.push(' ');
        }
    }
    let price = (next() % 100_000) as f64 / 100.0;
    rawdoc! {
        "_id": i as i64,
        "customer": format!("c{:06}", next() % 200_000),
        "price": price,
        "qty": (next() % 20) as i32,
        "status": WORDS[(next() % 4) as usize],
        "text": text,
    }
}

fn client(uri: &str) -> Client {
    Client::with_uri_str(uri).expect("connect")
}

fn load(uri: &str, n: u64, colls: u64, threads: usize, first: u64) {
    let c = client(uri);
    let next = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    // Batches of 1000 consecutive ids, spread over the collections.
                    let start = next.fetch_add(1000, Ordering::Relaxed);
                    if start >= n {
                        return;
                    }
                    let end = (start + 1000).min(n);
                    let batch: Vec<RawDocumentBuf> =
                        (first + start..first + end).map(document).collect();
                    bytes.fetch_add(
                        batch.iter().map(|d| d.as_bytes().len() as u64).sum(),
                        Ordering::Relaxed,
                    );
                    let coll = format!("c{}", (start / 1000) % colls);
                    c.database("bench")
                        .collection::<RawDocumentBuf>(&coll)
                        .insert_many(batch)
                        .run()
                        .expect("insert_many");
                }
            });
        }
    });
    println!(
        "load docs={n} bytes={} secs={:.3}",
        bytes.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
}

fn read(uri: &str, threads: usize, out: Option<&str>) {
    let c = client(uri);
    let mut work = Vec::new();
    for db in c.list_database_names().run().expect("list databases") {
        if ["admin", "local", "config"].contains(&db.as_str()) {
            continue;
        }
        for coll in c
            .database(&db)
            .list_collection_names()
            .run()
            .expect("list collections")
        {
            work.push((db.clone(), coll));
        }
    }
    let queue = Mutex::new(work);
    let sink: Option<Mutex<std::io::BufWriter<std::fs::File>>> = out.map(|p| {
        Mutex::new(std::io::BufWriter::with_capacity(
            8 << 20,
            std::fs::File::create(p).expect("create OUT"),
        ))
    });
    let (docs, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some((db, coll)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let mut cur = c
                        .database(&db)
                        .collection::<mongodb::bson::Document>(&coll)
                        .find(doc! {})
                        .batch_size(1000)
                        .run()
                        .expect("find");
                    let mut local = Vec::with_capacity(4 << 20);
                    while cur.advance().expect("cursor") {
                        let raw = cur.current().as_bytes();
                        docs.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(raw.len() as u64, Ordering::Relaxed);
                        if let Some(sink) = &sink {
                            local.extend_from_slice(raw);
                            if local.len() >= 4 << 20 {
                                sink.lock().unwrap().write_all(&local).unwrap();
                                local.clear();
                            }
                        }
                    }
                    if let Some(sink) = &sink {
                        sink.lock().unwrap().write_all(&local).unwrap();
                    }
                }
            });
        }
    });
    if let Some(sink) = sink {
        sink.into_inner().unwrap().flush().unwrap();
    }
    println!(
        "read docs={} bytes={} secs={:.3}",
        docs.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
}

fn touch(uri: &str, every: i64) {
    let c = client(uri);
    let t0 = Instant::now();
    let mut n = 0;
    for coll in c
        .database("bench")
        .list_collection_names()
        .run()
        .expect("list collections")
    {
        let r = c
            .database("bench")
            .collection::<mongodb::bson::Document>(&coll)
            .update_many(
                doc! {"_id": {"$mod": [every, 0]}},
                doc! {"$set": {"status": "touched"}, "$inc": {"qty": 1}},
            )
            .run()
            .expect("update_many");
        n += r.modified_count;
    }
    println!("touch docs={n} secs={:.3}", t0.elapsed().as_secs_f64());
}

/// Per collection of `bench`: documents and a BLAKE3 of their raw BSON in
/// `_id` order, so two servers' contents can be compared.
fn sum(uri: &str) {
    let c = client(uri);
    let mut colls = c
        .database("bench")
        .list_collection_names()
        .run()
        .expect("list collections");
    colls.sort();
    let mut out = Vec::new();
    for coll in colls {
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        let mut cur = c
            .database("bench")
            .collection::<mongodb::bson::Document>(&coll)
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .batch_size(1000)
            .run()
            .expect("find");
        while cur.advance().expect("cursor") {
            h.update(cur.current().as_bytes());
            n += 1;
        }
        out.push(format!("{coll}:{n}:{}", &h.finalize().to_hex()[..16]));
    }
    println!("{}", out.join(" "));
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| a.get(i).map(String::as_str);
    match arg(1) {
        Some("load") => load(
            &a[2],
            a[3].parse().unwrap(),
            a[4].parse().unwrap(),
            a[5].parse().unwrap(),
            arg(6).map_or(0, |f| f.parse().unwrap()),
        ),
        Some("read") => read(&a[2], a[3].parse().unwrap(), arg(4)),
        Some("touch") => touch(&a[2], a[3].parse().unwrap()),
        Some("sum") => sum(&a[2]),
        _ => {
            eprintln!(
                "usage: mongo_bench load URI N COLLS THREADS [FIRST] | read URI THREADS [OUT] | touch URI EVERY | sum URI"
            );
            std::process::exit(2);
        }
    }
}
