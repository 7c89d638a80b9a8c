//! `--diagnose`: where the time goes. Each experiment rebuilds one step of a
//! StoreHaus operation by hand with raw redis-rs / sqlx, so the gap between
//! StoreHaus and its baseline splits into "the protocol's own round trips"
//! and "the implementation's overhead". Printed only; never part of the
//! BENCHMARKS.md table.

use super::*;

/// The runtime's own fill script, so the experiments pay exactly what a
/// fill pays on the server.
use storehaus_runtime::test_hooks::FILL_SCRIPT;

async fn lease_get(s: &Shared, i: usize) {
    let id = &s.hot_ids[s.pick(i)];
    let key = s.store.cache_key(id);
    let mut conn = s.raw.clone();
    let lease = [0xC1u8; 17];
    let bytes: Option<Vec<u8>> = redis::cmd("SET")
        .arg(&key)
        .arg(&lease[..])
        .arg("NX")
        .arg("PX")
        .arg(2000)
        .arg("GET")
        .query_async(&mut conn)
        .await
        .expect("SET NX GET");
    let entry = codec::decode::<BenchUser>(<BenchUser as Cached>::FINGERPRINT, &bytes.expect("hit")).expect("decode");
    black_box(entry);
}

/// Raw GET + decode, each task on its own connection of a pool of ten.
#[derive(Clone)]
struct Pooled {
    s: Shared,
    conns: Arc<[MultiplexedConnection]>,
}

async fn hit_raw_pooled(p: &Pooled, i: usize) {
    let id = &p.s.hot_ids[p.s.pick(i)];
    let key = format!("{}:{}", p.s.raw_prefix, id);
    let mut conn = p.conns[i % p.conns.len()].clone();
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
    let row: BenchUser = rmp_serde::from_slice(&bytes.expect("raw key present")).expect("decode");
    black_box(row);
}

thread_local! {
    /// A small per-thread number: the connection slot of a thread-affine pool.
    static THREAD_SLOT: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

/// Raw GET + decode on a pool of connections chosen per worker thread.
async fn hit_raw_affine(p: &Pooled, i: usize) {
    let id = &p.s.hot_ids[p.s.pick(i)];
    let key = format!("{}:{}", p.s.raw_prefix, id);
    let slot = THREAD_SLOT.with(|s| *s) % p.conns.len();
    let mut conn = p.conns[slot].clone();
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("GET");
    let row: BenchUser = rmp_serde::from_slice(&bytes.expect("raw key present")).expect("decode");
    black_box(row);
}

#[derive(Clone)]
struct Pool1 {
    store: Arc<GenericStore<BenchUser>>,
    s: Shared,
}

async fn hit_pool1(p: &Pool1, i: usize) {
    let id = &p.s.hot_ids[p.s.pick(i)];
    black_box(p.store.get_by_id(id).await.expect("get_by_id").expect("hot row"));
}

/// Another manager on the shared Redis under the run's global prefix, so the
/// run's final cleanup removes its keys too.
fn sibling(s: &Shared, tweak: impl FnOnce(CacheConfig) -> CacheConfig) -> Arc<CacheManager> {
    let global = s
        .store
        .cache_manager()
        .expect("cached store")
        .global_prefix()
        .to_string();
    let config = tweak(CacheConfig::new(redis_url(), 3600, global));
    Arc::new(CacheManager::new(config).expect("valid cache config"))
}

fn print(title: &str, names: &[&str], m: &[Vec<f64>], unit: fn(f64) -> String) {
    println!("\n{title}");
    for (name, values) in names.iter().zip(m) {
        let r = pair(values, &m[0]);
        println!("  {name:<58} {:>14}   {:.2}× of the first", unit(r.ours), r.ratio);
    }
}

pub(crate) async fn run(s: &Shared, plan: &Plan) {
    cpu_study(s, plan).await;
    // --- 32-task hits: connections and command shape ---
    eprintln!("diagnose: 32-task hits");
    let mgr1 = sibling(s, |c| c.with_pool_size(1));
    let store1 = Arc::new(GenericStore::<BenchUser>::new(
        s.pool.clone(),
        None,
        Some(CacheParams::new(mgr1)),
    ));
    for id in s.hot_ids.iter() {
        store1.get_by_id(id).await.expect("fill");
    }
    let keys: Vec<String> = s.hot_ids.iter().map(|id| store1.cache_key(id)).collect();
    wait_filled(&s.raw, &keys).await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(raw_redis(&redis_url()).await);
    }
    let two = Pooled {
        s: s.clone(),
        conns: conns[..2].to_vec().into(),
    };
    let pooled = Pooled {
        s: s.clone(),
        conns: conns.into(),
    };
    let p1 = Pool1 {
        store: store1,
        s: s.clone(),
    };
    let (tasks, per) = (plan.tasks, plan.ops_per_task);
    let mut variants = vec![
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { throughput!(s, tasks, per, hit_raw) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { throughput!(s, tasks, per, lease_get) }
            })
        },
        {
            let p = pooled.clone();
            variant(move |_| {
                let p = p.clone();
                async move { throughput!(p, tasks, per, hit_raw_pooled) }
            })
        },
        {
            let p = two.clone();
            variant(move |_| {
                let p = p.clone();
                async move { throughput!(p, tasks, per, hit_raw_pooled) }
            })
        },
        {
            let p = two.clone();
            variant(move |_| {
                let p = p.clone();
                async move { throughput!(p, tasks, per, hit_raw_affine) }
            })
        },
        {
            let p = pooled.clone();
            variant(move |_| {
                let p = p.clone();
                async move { throughput!(p, tasks, per, hit_raw_affine) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { throughput!(s, tasks, per, hit_ours) }
            })
        },
        {
            let p = p1.clone();
            variant(move |_| {
                let p = p.clone();
                async move { throughput!(p, tasks, per, hit_pool1) }
            })
        },
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    print(
        &format!("hits at {tasks} tasks (throughput)"),
        &[
            "raw GET + decode, 1 connection",
            "raw SET NX PX GET + envelope decode, 1 connection",
            "raw GET + decode, 10 connections round-robin",
            "raw GET + decode, 2 connections round-robin",
            "raw GET + decode, 2 connections, one per worker thread",
            "raw GET + decode, 10 connections, slot per worker thread",
            "StoreHaus get_by_id, pool_size 10 (default)",
            "StoreHaus get_by_id, pool_size 1",
        ],
        &m,
        ops,
    );

    // --- hits at 1 task: the same shapes ---
    eprintln!("diagnose: 1-task hits");
    let n = plan.hit_ops;
    let mut variants = vec![
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { latency_us!(n, |i| hit_raw(&s, i).await) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { latency_us!(n, |i| lease_get(&s, i).await) }
            })
        },
        {
            let s = s.clone();
            variant(move |_| {
                let s = s.clone();
                async move { latency_us!(n, |i| hit_ours(&s, i).await) }
            })
        },
    ];
    let m = interleave(plan.rounds, &mut variants).await;
    print(
        "hits at 1 task (latency)",
        &[
            "raw GET + decode",
            "raw SET NX PX GET + envelope decode",
            "StoreHaus get_by_id",
        ],
        &m,
        us,
    );

    // --- misses: the protocol's steps by hand ---
    eprintln!("diagnose: misses");
    let n = plan.miss_ops;
    let per_side = (plan.rounds + 1) * n;
    // A StoreHaus store on one connection, for mode 5.
    let store1 = Arc::new(GenericStore::<BenchUser>::new(
        s.pool.clone(),
        None,
        Some(CacheParams::new(sibling(s, |c| c.with_pool_size(1)))),
    ));
    let names = [
        "GET (miss) + SELECT: the floor",
        "SET NX PX GET (lease) + SELECT",
        "lease + SELECT + fill awaited",
        "lease + SELECT + fill spawned",
        "StoreHaus get_by_id, pool_size 10 (default)",
        "StoreHaus get_by_id, pool_size 1",
        "lease + SELECT + fill spawned, each command under timeout_at",
    ];
    let mut sets = Vec::new();
    for _ in 0..names.len() {
        let rows = users(per_side);
        insert(&s.pool, "bench_users", &rows).await;
        sets.push(rows.iter().map(|u| u.id).collect::<Arc<[Uuid]>>());
    }
    let fill = Arc::new(redis::Script::new(FILL_SCRIPT));
    let base = format!("{}:diag", s.raw_prefix);
    let mut variants: Vec<Variant> = Vec::new();
    for (mode, ids) in sets.into_iter().enumerate() {
        let (s, fill, base, store1) = (s.clone(), fill.clone(), base.clone(), store1.clone());
        variants.push(variant(move |round| {
            let (s, ids, fill, base, store1) = (s.clone(), ids.clone(), fill.clone(), base.clone(), store1.clone());
            async move {
                latency_us!(n, |i| {
                    let id = ids[round * n + i];
                    if mode == 4 {
                        black_box(s.store.get_by_id(&id).await.expect("get_by_id"));
                    } else if mode == 5 {
                        black_box(store1.get_by_id(&id).await.expect("get_by_id"));
                    } else {
                        let timed = mode == 6;
                        let budget = || tokio::time::Instant::now() + Duration::from_millis(500);
                        let key = format!("{base}:{id}");
                        let lease = [0xC1u8; 17];
                        let mut conn = s.raw.clone();
                        let mut cmd = redis::cmd(if mode == 0 { "GET" } else { "SET" });
                        cmd.arg(&key);
                        if mode > 0 {
                            cmd.arg(&lease[..]).arg("NX").arg("PX").arg(2000).arg("GET");
                        }
                        let got: Option<Vec<u8>> = if timed {
                            tokio::time::timeout_at(budget(), cmd.query_async(&mut conn))
                                .await
                                .expect("in time")
                                .expect("lookup")
                        } else {
                            cmd.query_async(&mut conn).await.expect("lookup")
                        };
                        assert!(got.is_none(), "fresh key");
                        let row: Option<BenchUser> = sqlx::query_as(SELECT_SQL)
                            .bind(id)
                            .fetch_optional(&s.pool)
                            .await
                            .expect("SELECT");
                        let bytes = codec::encode(<BenchUser as Cached>::FINGERPRINT, row.as_ref()).expect("encode");
                        let run_fill = {
                            let fill = fill.clone();
                            async move {
                                let mut inv = fill.key(&key);
                                inv.arg(&lease[..]).arg(3_600_000).arg(bytes);
                                let filled: u64 = if timed {
                                    tokio::time::timeout_at(budget(), inv.invoke_async(&mut conn))
                                        .await
                                        .expect("in time")
                                        .expect("fill")
                                } else {
                                    inv.invoke_async(&mut conn).await.expect("fill")
                                };
                                black_box(filled);
                            }
                        };
                        match mode {
                            2 => run_fill.await,
                            3 | 6 => {
                                tokio::spawn(run_fill);
                            }
                            _ => {}
                        }
                        black_box(row);
                    }
                })
            }
        }));
    }
    let m = interleave(plan.rounds, &mut variants).await;
    print("misses (latency)", &names, &m, us);

    // --- update: what the invalidation round trip costs ---
    eprintln!("diagnose: update");
    let n = plan.update_ops;
    let mut variants: Vec<Variant> = Vec::new();
    for mode in 0..3 {
        let rows: Arc<[BenchUser]> = users(32).into();
        insert(&s.pool, "bench_users", &rows).await;
        let s = s.clone();
        variants.push(variant(move |round| {
            let (s, rows) = (s.clone(), rows.clone());
            async move {
                latency_us!(n, |i| {
                    let mut rec = rows[i % rows.len()].clone();
                    rec.age = ((round * n + i) % 90) as i32;
                    if mode == 2 {
                        let id = rec.id;
                        black_box(s.store.update(&id, rec, None).await.expect("update"));
                    } else {
                        let row: Option<BenchUser> = sqlx::query_as(UPDATE_SQL)
                            .bind(&rec.name)
                            .bind(&rec.email)
                            .bind(rec.age)
                            .bind(rec.active)
                            .bind(rec.created_at)
                            .bind(rec.id)
                            .fetch_optional(&s.pool)
                            .await
                            .expect("UPDATE");
                        if mode == 1 {
                            let mut conn = s.raw.clone();
                            let mut pipe = redis::pipe();
                            pipe.cmd("DEL").arg(s.store.cache_key(&rec.id));
                            pipe.cmd("INCR").arg(format!("{}:gen", s.raw_prefix)).ignore();
                            let (deleted,): (u64,) = pipe.query_async(&mut conn).await.expect("invalidate");
                            black_box(deleted);
                        }
                        black_box(row);
                    }
                })
            }
        }));
    }
    let m = interleave(plan.rounds, &mut variants).await;
    print(
        "update (latency)",
        &[
            "sqlx UPDATE … RETURNING",
            "sqlx UPDATE … RETURNING + DEL/INCR pipeline",
            "StoreHaus update",
        ],
        &m,
        us,
    );
}

/// `--profile-op KIND --ops N`: N operations of one kind, nothing else, for
/// `valgrind --tool=callgrind`. Run it twice with different N: the
/// difference of the two instruction totals divided by the difference of N
/// is the cost of one operation, free of the setup.
pub(crate) async fn profile_op(s: &Shared, kind: &str, n: usize) {
    const SPARE: usize = 3000;
    let needs_rows = kind.starts_with("miss") || kind.starts_with("update");
    assert!(n <= SPARE || !needs_rows, "at most {SPARE} operations that need rows");
    let rows = if needs_rows { users(SPARE) } else { Vec::new() };
    if needs_rows {
        insert(&s.pool, "bench_users", &rows).await;
    }
    let fill = Arc::new(redis::Script::new(FILL_SCRIPT));
    let down = if kind.starts_with("down") {
        let url = format!("redis://127.0.0.1:{}", free_port());
        let mgr = manager(&url, |c| c.with_retry_attempts(0).with_circuit_breaker(3, 3_600_000));
        let store = GenericStore::<BenchUser>::new(s.pool.clone(), None, Some(CacheParams::new(mgr.clone())));
        while !mgr.get_stats().await.expect("stats").breaker_open {
            store.get_by_id(&s.hot_ids[0]).await.expect("database answers");
        }
        Some(store)
    } else {
        None
    };
    let pool1 = if kind == "hit32_pool1" {
        let mgr = sibling(s, |c| c.with_pool_size(1));
        let store = Arc::new(GenericStore::<BenchUser>::new(
            s.pool.clone(),
            None,
            Some(CacheParams::new(mgr)),
        ));
        for id in s.hot_ids.iter() {
            store.get_by_id(id).await.expect("fill");
        }
        let keys: Vec<String> = s.hot_ids.iter().map(|id| store.cache_key(id)).collect();
        wait_filled(&s.raw, &keys).await;
        Some(Pool1 { store, s: s.clone() })
    } else {
        None
    };
    // The near cache's hits, and the ceiling they are held to: the same
    // rows in a HashMap.
    let near = if kind == "near_ours" {
        let mgr = sibling(s, |c| c.with_near_cache(10_000));
        let store = GenericStore::<BenchUser>::new(s.pool.clone(), None, Some(CacheParams::new(mgr.clone())));
        for id in s.hot_ids.iter().chain(s.hot_ids.iter()) {
            store.get_by_id(id).await.expect("fill");
        }
        while mgr.get_stats().await.expect("stats").near_hits < s.hot_ids.len() as u64 {
            for id in s.hot_ids.iter() {
                store.get_by_id(id).await.expect("near");
            }
        }
        Some(store)
    } else {
        None
    };
    let memory: std::collections::HashMap<_, BenchUser> = if kind == "memory_raw" {
        s.hot.iter().map(|u| (u.id, u.clone())).collect()
    } else {
        Default::default()
    };
    eprintln!("profile: {n} × {kind}");
    let start = Instant::now();
    // µs per operation, or operations per second for the 32-task kinds.
    let value = match kind {
        "hit_ours" => {
            latency_us!(n, |i| hit_ours(s, i).await)
        }
        "near_ours" => {
            let store = near.as_ref().expect("near store");
            latency_us!(n, |i| {
                let got = store.get_by_id(&s.hot_ids[s.pick(i)]).await.expect("get_by_id");
                black_box(got.expect("hot row"));
            })
        }
        "memory_raw" => {
            latency_us!(n, |i| {
                black_box(memory.get(&s.hot_ids[s.pick(i)]).cloned().expect("hot row"));
            })
        }
        "hit_raw" => {
            latency_us!(n, |i| hit_raw(s, i).await)
        }
        "hit_lease_raw" => {
            latency_us!(n, |i| lease_get(s, i).await)
        }
        "hit_cached" => {
            latency_us!(n, |i| hit_cached(s, i).await)
        }
        "hit32_ours" => {
            throughput!(s, 32, n / 32, hit_ours)
        }
        "hit32_raw" => {
            throughput!(s, 32, n / 32, hit_raw)
        }
        "hit32_pool1" => {
            let p = pool1.expect("pool1 store");
            throughput!(p, 32, n / 32, hit_pool1)
        }
        "many_ours" => {
            latency_us!(n, |_i| {
                black_box(s.store.get_many(&s.hot_ids).await.expect("get_many"));
            })
        }
        "many_raw" => {
            latency_us!(n, |_i| {
                let keys: Vec<String> = s.hot_ids.iter().map(|id| s.store.cache_key(id)).collect();
                let mut conn = s.raw.clone();
                let got: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .expect("MGET");
                let rows: Vec<Option<BenchUser>> = got
                    .iter()
                    .map(|b| {
                        match codec::decode::<BenchUser>(<BenchUser as Cached>::FINGERPRINT, b.as_deref().expect("hit"))
                        {
                            Ok(Entry::Record(r)) => Some(r),
                            _ => None,
                        }
                    })
                    .collect();
                black_box(rows);
            })
        }
        "miss_ours" => {
            latency_us!(n, |i| {
                black_box(s.store.get_by_id(&rows[i].id).await.expect("get_by_id"));
            })
        }
        "miss_floor" | "miss_manual" => {
            let manual = kind == "miss_manual";
            latency_us!(n, |i| {
                let id = rows[i].id;
                let key = s.store.cache_key(&id);
                let lease = [0xC1u8; 17];
                let mut conn = s.raw.clone();
                let mut cmd = redis::cmd(if manual { "SET" } else { "GET" });
                cmd.arg(&key);
                if manual {
                    cmd.arg(&lease[..]).arg("NX").arg("PX").arg(2000).arg("GET");
                }
                let got: Option<Vec<u8>> = cmd.query_async(&mut conn).await.expect("lookup");
                assert!(got.is_none(), "fresh key");
                let row: Option<BenchUser> = sqlx::query_as(SELECT_SQL)
                    .bind(id)
                    .fetch_optional(&s.pool)
                    .await
                    .expect("SELECT");
                if manual {
                    let bytes = codec::encode(<BenchUser as Cached>::FINGERPRINT, row.as_ref()).expect("encode");
                    let fill = fill.clone();
                    tokio::spawn(async move {
                        let mut inv = fill.prepare_invoke();
                        inv.key(&key).arg(&lease[..]).arg(3_600_000).arg(bytes);
                        let filled: u64 = inv.invoke_async(&mut conn).await.expect("fill");
                        black_box(filled);
                    });
                }
                black_box(row);
            })
        }
        "update_ours" | "update_raw" | "update_manual" => {
            latency_us!(n, |i| {
                let mut rec = rows[i].clone();
                rec.age += 1;
                if kind == "update_ours" {
                    let id = rec.id;
                    black_box(s.store.update(&id, rec, None).await.expect("update"));
                } else {
                    let row: Option<BenchUser> = sqlx::query_as(UPDATE_SQL)
                        .bind(&rec.name)
                        .bind(&rec.email)
                        .bind(rec.age)
                        .bind(rec.active)
                        .bind(rec.created_at)
                        .bind(rec.id)
                        .fetch_optional(&s.pool)
                        .await
                        .expect("UPDATE");
                    if kind == "update_manual" {
                        let mut conn = s.raw.clone();
                        let mut pipe = redis::pipe();
                        pipe.cmd("DEL").arg(s.store.cache_key(&rec.id));
                        pipe.cmd("INCR").arg(format!("{}:gen", s.raw_prefix)).ignore();
                        let (deleted,): (u64,) = pipe.query_async(&mut conn).await.expect("invalidate");
                        black_box(deleted);
                    }
                    black_box(row);
                }
            })
        }
        "down_ours" => {
            let store = down.expect("down store");
            latency_us!(n, |i| {
                black_box(store.get_by_id(&s.hot_ids[s.pick(i)]).await.expect("get_by_id"));
            })
        }
        "down_raw" => {
            latency_us!(n, |i| {
                let row: Option<BenchUser> = sqlx::query_as(SELECT_SQL)
                    .bind(s.hot_ids[s.pick(i)])
                    .fetch_optional(&s.pool)
                    .await
                    .expect("SELECT");
                black_box(row);
            })
        }
        other => panic!("unknown --profile-op {other}"),
    };
    eprintln!("profile: done in {:.2} s ({value:.1})", start.elapsed().as_secs_f64());
    // Let spawned fills finish inside the measured process.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// CPU nanoseconds used so far by every thread of this process
/// (`/proc/self/task/*/schedstat`, first field).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// CPU nanoseconds used so far by a redis-server (`INFO cpu`).
async fn server_cpu_ns(conn: &MultiplexedConnection) -> u64 {
    let mut conn = conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut conn)
        .await
        .expect("INFO cpu");
    let secs: f64 = info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    (secs * 1e9) as u64
}

/// Client + server CPU per operation at 32 tasks, on a private redis-server
/// so other users of the shared one don't count. Less sensitive to a busy
/// machine than throughput.
pub(crate) async fn cpu_study(s: &Shared, plan: &Plan) {
    eprintln!("diagnose: CPU per hit at {} tasks (private redis-server)", plan.tasks);
    let server = storehaus_testkit::RedisServer::start().await;
    let url = server.url();
    let mut stores = Vec::new();
    for pool in [10, 2, 1] {
        let mgr = manager(&url, |c| c.with_pool_size(pool));
        let store = Arc::new(GenericStore::<BenchUser>::new(
            s.pool.clone(),
            None,
            Some(CacheParams::new(mgr)),
        ));
        for id in s.hot_ids.iter() {
            store.get_by_id(id).await.expect("fill");
        }
        let keys: Vec<String> = s.hot_ids.iter().map(|id| store.cache_key(id)).collect();
        let probe = raw_redis(&url).await;
        wait_filled(&probe, &keys).await;
        stores.push(store);
    }
    let raw = raw_redis(&url).await;
    let mut conn = raw.clone();
    for u in s.hot.iter() {
        let _: () = redis::cmd("SET")
            .arg(format!("{}:{}", s.raw_prefix, u.id))
            .arg(rmp_serde::to_vec(u).expect("encode"))
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(raw_redis(&url).await);
    }
    let base = Shared {
        raw: raw.clone(),
        ..s.clone()
    };
    let ten = Pooled {
        s: base.clone(),
        conns: conns.clone().into(),
    };
    let two = Pooled {
        s: base.clone(),
        conns: conns[..2].to_vec().into(),
    };
    let (tasks, per) = (plan.tasks, plan.ops_per_task * 3);
    let total = (tasks * per) as f64;
    let names = [
        "raw GET + decode, 1 connection",
        "raw GET + decode, 10 connections round-robin",
        "raw GET + decode, 2 connections, one per worker thread",
        "StoreHaus get_by_id, pool_size 10 (default)",
        "StoreHaus get_by_id, pool_size 2",
        "StoreHaus get_by_id, pool_size 1",
    ];
    let mut client: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut server_side: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..=plan.rounds {
        for j in 0..names.len() {
            let v = (round + j) % names.len();
            let (c0, s0) = (process_cpu_ns(), server_cpu_ns(&raw).await);
            // CPU is what this study reads; the rate is not used here.
            let _ops_per_s = match v {
                0 => {
                    throughput!(base, tasks, per, hit_raw)
                }
                1 => {
                    throughput!(ten, tasks, per, hit_raw_pooled)
                }
                2 => {
                    throughput!(two, tasks, per, hit_raw_affine)
                }
                _ => {
                    let p = Pool1 {
                        store: stores[v - 3].clone(),
                        s: base.clone(),
                    };
                    throughput!(p, tasks, per, hit_pool1)
                }
            };
            let (c1, s1) = (process_cpu_ns(), server_cpu_ns(&raw).await);
            if round > 0 {
                client[v].push((c1 - c0) as f64 / total / 1000.0);
                server_side[v].push((s1 - s0) as f64 / total / 1000.0);
            }
            settle().await;
        }
    }
    println!("\nCPU per hit at {tasks} tasks, private redis-server (µs of CPU per operation)");
    println!("  {:<58} {:>8} {:>8} {:>8}", "", "client", "server", "total");
    for (k, name) in names.iter().enumerate() {
        let (c, sv) = (median(&client[k]), median(&server_side[k]));
        println!("  {name:<58} {c:>8.2} {sv:>8.2} {:>8.2}", c + sv);
    }
    drop(server);
}
