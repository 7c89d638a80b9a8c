/*
 * A model of the outbox's delivery (storehaus-runtime/src/outbox/pass.rs),
 * checked by spin in scripts/model.sh.
 *
 * N transactions begin (taking increasing xids), log one entry each (taking
 * increasing sequence numbers: the order they write in, not the order they
 * commit in) and commit, in any interleaving. Two workers of one deployment
 * make passes over the log: take a snapshot and read the deployment's row
 * (position, and the snapshot whose visible entries it has delivered), read
 * the entries still pending and deliver them (a DEL: idempotent), then move
 * the row: the position to the snapshot's xmin (never backwards), the seen
 * snapshot to theirs (never to an older one). Worker 2 may stall for good
 * at any step. At the end a pass of worker 1 runs once every transaction
 * has committed.
 *
 * Properties: an entry at or below the position is delivered (checked after
 * every move), and at the end every entry is delivered.
 *
 * Variants (each must be caught):
 *   -DNO_HORIZON  the position moves to the last entry read, regardless of
 *                 the transactions still running (the bug the horizon rule
 *                 prevents: a lower xid committing later is lost);
 *   -DNO_XIP      what the seen snapshot saw running is not re-read (an
 *                 entry of a transaction that committed after it is lost);
 *   -DROW_LOCK    a pass holds the row from its read to its move and a
 *                 worker that finds it held skips its pass (the old design:
 *                 a stalled peer holding the row stops every delivery).
 */

#define N 2
#define PASSES 2

byte next_xid = 1;
byte next_seq = 1;
byte xid[N];
byte seq[N];
bool committed[N];
bool delivered[N];

/* The deployment's row. */
byte pos_x = 0;
byte pos_s = 0;
bool seen_valid = false;
byte seen_xmax = 0;
byte seen_xip = 0;     /* bit x set: xid x was running */
bool held = false;     /* ROW_LOCK only */
bool finished = false;

#define BEFORE(x1, s1, x2, s2) ((x1) < (x2) || ((x1) == (x2) && (s1) < (s2)))

proctype Txn(byte i) {
    atomic { xid[i] = next_xid; next_xid++ };
    atomic { seq[i] = next_seq; next_seq++ };
    committed[i] = true
}

/* One pass; `w` names the worker, and worker 2 may stall at any step. */
inline pass(w) {
    skip;
#ifdef ROW_LOCK
    atomic {
        if
        :: held -> goto skipped
        :: else -> held = true
        fi
    };
#endif
    if :: w == 2 -> if :: goto stalled :: skip fi :: else -> skip fi;
    d_step {
        /* The snapshot, and the row, read without a lock. */
        s_xmax = next_xid; s_xmin = next_xid; s_xip = 0; j = 0;
        do
        :: j < N ->
            if
            :: xid[j] != 0 && !committed[j] ->
                s_xip = s_xip | (1 << xid[j]);
                if :: xid[j] < s_xmin -> s_xmin = xid[j] :: else -> skip fi
            :: else -> skip
            fi;
            j++
        :: else -> break
        od;
        c_x = pos_x; c_s = pos_s; c_valid = seen_valid; c_xmax = seen_xmax; c_xip = seen_xip;
#ifdef NO_XIP
        c_xip = 0;
#endif
        j = 0
    };
    if :: w == 2 -> if :: goto stalled :: skip fi :: else -> skip fi;
    d_step {
        /* The entries still pending: committed (visible now), above the
         * position, of a transaction the seen snapshot did not see committed. */
        batch = 0; l_x = c_x; l_s = c_s; j = 0;
        do
        :: j < N ->
            if
            :: (seq[j] != 0 && committed[j] && BEFORE(c_x, c_s, xid[j], seq[j]) && (!c_valid || xid[j] >= c_xmax || (c_xip & (1 << xid[j])) != 0)) ->
                batch = batch | (1 << j);
                if :: BEFORE(l_x, l_s, xid[j], seq[j]) -> l_x = xid[j]; l_s = seq[j] :: else -> skip fi
            :: else -> skip
            fi;
            j++
        :: else -> break
        od;
        j = 0;
        /* Delivered (a DEL, idempotent). */
        do
        :: j < N -> if :: (batch & (1 << j)) != 0 -> delivered[j] = true :: else -> skip fi; j++
        :: else -> break
        od;
        j = 0; batch = 0
    };
    if :: w == 2 -> if :: goto stalled :: skip fi :: else -> skip fi;
    d_step {
        /* Move the row: never backwards, never to an older snapshot. */
#ifdef NO_HORIZON
        n_x = l_x; n_s = l_s;
#else
        n_x = s_xmin; n_s = 0;
#endif
        if :: BEFORE(pos_x, pos_s, n_x, n_s) -> pos_x = n_x; pos_s = n_s :: else -> skip fi;
        if
        :: !seen_valid || seen_xmax <= s_xmax -> seen_valid = true; seen_xmax = s_xmax; seen_xip = s_xip
        :: else -> skip
        fi;
        /* Nothing at or below the position is left undelivered. */
        do
        :: j < N ->
            assert(seq[j] == 0 || BEFORE(pos_x, pos_s, xid[j], seq[j]) || delivered[j]);
            j++
        :: else -> break
        od;
        j = 0; s_xmax = 0; s_xmin = 0; s_xip = 0; c_x = 0; c_s = 0; c_xmax = 0; c_xip = 0;
        c_valid = false; l_x = 0; l_s = 0; n_x = 0; n_s = 0
    };
#ifdef ROW_LOCK
    held = false;
skipped:
#endif
    skip
}

proctype Worker(byte w) {
    byte s_xmax, s_xmin, s_xip, c_x, c_s, c_xmax, c_xip, batch, l_x, l_s, n_x, n_s, j, p;
    bool c_valid;
    do
    :: p < PASSES -> pass(w); p++
    :: else -> break
    od;
stalled:
    if :: w == 1 -> finished = true :: else -> skip fi
}

init {
    byte s_xmax, s_xmin, s_xip, c_x, c_s, c_xmax, c_xip, batch, l_x, l_s, n_x, n_s, j;
    bool c_valid;
    atomic {
        run Txn(0); run Txn(1);
        run Worker(1); run Worker(2)
    };
    (committed[0] && committed[1] && finished);
    pass(1);
stalled:
    j = 0;
    do
    :: j < N -> assert(delivered[j]); j++
    :: else -> break
    od
}
