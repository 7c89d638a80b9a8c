/*
 * The read / write / invalidate protocol of one cached row, as a Promela
 * model for spin: `bash scripts/model.sh` checks it over every interleaving.
 *
 * Redis is one key (GET, SET NX GET, the compare-and-set fill, DEL, expiry),
 * the database one versioned row, and two processes (0 and 1) each have a
 * flight table (single-flight loads) and a set of pending invalidations.
 * Readers take leases and join in-process loads; writers commit, detach the
 * process's load, invalidate after the commit and, when Redis did not
 * answer, remember the invalidation for replay.
 *
 * Each step names the code it stands for (storehaus-runtime/src/...).
 *
 * The invariant, asserted where every read returns:
 *   no read returns a version older than the last write that had returned
 *   before the read began, in any process when that write's invalidation
 *   reached Redis, and in the writer's own process in any case.
 *
 * Scenarios (spin -DSCENARIO=n): 1, across processes: process 0 has two
 * readers, process 1 a writer and a reader; 2, the writer's own process:
 * process 0 has the writer and two readers, process 1 a reader; 3, early
 * refresh (cache/early.rs): process 0 has a reader that refreshes the value
 * it hits and a reader, process 1 two writers (the row goes X -> Y -> X:
 * its content is its version modulo 2) and a reader. Each read and write
 * happens once, in every order. -DEXPIRIES=1 lets Redis expire the key (a
 * lease or a value) once, anywhere (8 M states, a minute).
 *
 * Knobs (spin -D...), to show what each mechanism is for:
 *   JOIN_CHECKS_LEASE=0  a reader joins its process's load whatever lease it
 *                        found (the cross-process join hole): violated.
 *   FILL_CAS=0           the fill is a plain SET, not compare-and-set on the
 *                        lease (the cache-aside stale-set race): violated.
 *   DETACH_ON_WRITE=0    a write does not detach its process's load: holds
 *                        across processes (the lease comparison alone
 *                        closes the hole); with JOIN_CHECKS_LEASE=0 too,
 *                        violated in the writer's own process (scenario 2).
 *   REFRESH_TOKEN=0      an early refresh replaces the value only where the
 *                        key holds the same *content* it read, not the same
 *                        fill (the envelope's fill token): violated in
 *                        scenario 3 (the refresh ABA: it loads Y after W1,
 *                        W2 writes X back and a reader fills X, the refresh
 *                        finds "its" X and puts Y back).
 *
 * The hole spin finds with JOIN_CHECKS_LEASE=0 (scenario 1, shortest
 * trail): a reader of process 0 takes the lease and loads version 0; the
 * writer of process 1 commits version 1, deletes the key (and the lease)
 * and returns; the reader of process 1 takes a new lease; a second reader
 * of process 0 begins, finds that new lease and joins the first reader's
 * load: it returns version 0 after version 1 was written and invalidated.
 */

#ifndef JOIN_CHECKS_LEASE
#define JOIN_CHECKS_LEASE 1
#endif
#ifndef FILL_CAS
#define FILL_CAS 1
#endif
#ifndef DETACH_ON_WRITE
#define DETACH_ON_WRITE 1
#endif
#ifndef REFRESH_TOKEN
#define REFRESH_TOKEN 1
#endif
#ifndef SCENARIO
#define SCENARIO 1
#endif

#define EMPTY 0
#define VAL   1
#define LEASE 2

/* Leases are numbered from 1; one per read at most. */
#define MAXLEASE 8

/* The database: the row's version (0 = as created). store/write.rs */
byte db_ver = 0;
byte next_ver = 0;

/* Redis: the row's key. backend/redis (GET, SET NX GET, fill script, DEL) */
byte rk = EMPTY;
byte rval = 0;
byte rlease = 0;
/* The fill that wrote the value: the envelope's random fill token
 * (cache/codec.rs), unique per fill. */
byte rfill = 0;
byte next_fill = 0;

byte next_lease = 0;

/* Per process: cache/flight.rs Flights (one key: its current load). */
bool fl_active[2];
byte fl_lease[2];
/* Per lease: what its load published (Lead::publish), for followers. */
bool pub_done[MAXLEASE];
byte pub_val[MAXLEASE];

/* Per process: cache/pending.rs, invalidations that did not reach Redis. */
bool pend[2];

/* What reads must not go below: the last returned write, per process and
 * (when its invalidation reached Redis) for every process. */
byte floor_all = 0;
byte floor_proc[2];

proctype Writer(byte p) {
    byte w;
    bool delivered;
    /* store/write.rs: the UPDATE commits (the database serialises writes). */
    atomic { next_ver++; w = next_ver; db_ver = w }
    /* cache/invalidate.rs invalidate_committed: Flights::detach first. */
#if DETACH_ON_WRITE
    fl_active[p] = false;
#endif
    /* cache/invalidate.rs: DEL under the budget, or remembered (scenario
     * 3, about the refresh, delivers every invalidation). */
    if
    :: rk = EMPTY; delivered = true
    :: SCENARIO != 3 -> delivered = false; pend[p] = true                  /* timed out, not applied */
    :: SCENARIO != 3 -> rk = EMPTY; delivered = false; pend[p] = true      /* timed out, applied */
    fi;
    /* The write returns. */
    atomic {
        if :: w > floor_proc[p] -> floor_proc[p] = w :: else fi;
        if :: delivered && w > floor_all -> floor_all = w :: else fi
    }
}

/* cache/replay.rs: the remembered DEL, replayed once Redis answers. */
proctype Replayer(byte p) {
end:
    do
    :: pend[p] -> rk = EMPTY; pend[p] = false
    od
}

/* Redis expires a lease (lease TTL) or a value (record TTL), at most
 * EXPIRIES times in a run. */
#ifndef EXPIRIES
#define EXPIRIES 0
#endif
proctype Expiry() {
    byte n = 0;
end:
    do
    :: atomic { n < EXPIRIES && rk != EMPTY -> rk = EMPTY; n++ }
    od
}

proctype Reader(byte p; bool refresh) {
    byte f, lease, found, joined, v, seen, seen_fill;
    /* The read begins: what it must not go below. */
    atomic { f = floor_proc[p]; if :: floor_all > f -> f = floor_all :: else fi }
    /* cache/mod.rs ready(): pending invalidations in this process bypass Redis. */
    if
    :: pend[p] -> v = db_ver; goto done
    :: else
    fi;
    /* cache/read.rs new_lease */
    atomic { next_lease++; lease = next_lease }
    /* cache/read.rs lookup: GET ... (with early refresh, a hit may be due) */
    atomic {
        if
        :: rk == VAL && refresh -> v = rval; seen = rval; seen_fill = rfill; goto refill
        :: rk == VAL -> v = rval; goto done
        :: rk == LEASE -> found = rlease; goto busy
        :: rk == EMPTY
        fi
    }
    /* ... and on a miss SET key lease NX PX GET. */
    atomic {
        if
        :: rk == EMPTY -> rk = LEASE; rlease = lease; goto lead
        :: rk == VAL -> v = rval; goto done
        :: rk == LEASE -> found = rlease; goto busy
        fi
    }

lead:
    /* cache/read.rs load_and_fill: Flights::lead, the load, Lead::publish. */
    atomic { fl_active[p] = true; fl_lease[p] = lease }
    v = db_ver;
    atomic { pub_val[lease] = v; pub_done[lease] = true }
    /* The reader returns v here; the fill runs in a task (cache/fill.rs:
     * the compare-and-set script), the load joinable until it lands. */
    atomic {
        if
        :: FILL_CAS && rk == LEASE && rlease == lease -> rk = VAL; rval = v; next_fill++; rfill = next_fill
        :: !FILL_CAS -> rk = VAL; rval = v; next_fill++; rfill = next_fill
        :: else
        fi
    }
    /* flight.rs Drop for Lead: leaves the table if still its entry. */
    atomic { if :: fl_active[p] && fl_lease[p] == lease -> fl_active[p] = false :: else fi }
    goto done;

refill:
    /* cache/early.rs refresh_early: load the row, then replace the value
     * read only where the key still holds that very fill (the fill script
     * compares the bytes, which carry the fill token). The reader answers
     * what it loaded. */
    v = db_ver;
    atomic {
        if
        :: REFRESH_TOKEN && rk == VAL && rfill == seen_fill -> rval = v; next_fill++; rfill = next_fill
        :: !REFRESH_TOKEN && rk == VAL && rval % 2 == seen % 2 -> rval = v; next_fill++; rfill = next_fill
        :: else
        fi
    }
    goto done;

busy:
    /* cache/read.rs behind_another_reader: flight.rs Flights::join ... */
    if
    :: atomic { fl_active[p] && (!JOIN_CHECKS_LEASE || fl_lease[p] == found) -> joined = fl_lease[p] }
        /* ... flight.rs follow: the joined load's value. */
        pub_done[joined];
        v = pub_val[joined];
        goto done
    :: else
    fi;
    /* cache/read.rs wait_for_fill: poll until a value lands, or give up
     * (lease gone, lease wait over) and read the database without a fill. */
    if
    :: atomic { rk == VAL -> v = rval }
    :: v = db_ver
    fi;

done:
    assert(v >= f)
}

init {
    atomic {
        run Expiry();
        run Replayer(0);
        run Replayer(1);
#if SCENARIO == 3
        /* Early refresh: the key starts cached (X, version 0), as the
         * refresh needs a hit. Process 0 a refreshing reader and a reader,
         * process 1 two writers and a reader. */
        rk = VAL; rval = 0; next_fill = 1; rfill = 1;
        run Reader(0, true);
        run Reader(0, false);
        run Writer(1);
        run Writer(1);
        run Reader(1, false)
#elif SCENARIO == 2
        /* The writer's own process, its invalidation possibly lost:
         * process 0 a writer and two readers, process 1 a reader. */
        run Writer(0);
        run Reader(0, false);
        run Reader(0, false);
        run Reader(1, false)
#else
        /* Across processes: process 0 two readers, process 1 a writer
         * and a reader. */
        run Reader(0, false);
        run Reader(0, false);
        run Writer(1);
        run Reader(1, false)
#endif
    }
}
