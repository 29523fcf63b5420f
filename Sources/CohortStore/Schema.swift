import GRDB

/// The results store's schema, one migration per released change. Migrations only ever get
/// appended: a file written by an older Cohort is upgraded in place when it is opened.
///
/// Conventions, so the file reads well in `sqlite3` or any SQLite browser:
/// - times of day (`created_at`, `finished_at`) are ISO-8601 text in UTC;
/// - round times (`started_at`, `ended_at`, `duration_seconds`) are seconds as REAL on the run's
///   clock: simulated time in a simulation, wall-clock time on a server; `real_seconds` is what
///   the round took on the machine's clock (what a simulated round costs), NULL when unknown;
/// - `runs.seed` is the scenario's UInt64 seed stored as the Int64 with the same bits (SQLite
///   integers are signed), so seeds above 2^63−1 read as negative numbers; `scenario_json`
///   holds the seed as written;
/// - checkpoint `weights` are IEEE-754 Float32 little-endian, in layout order, and `sha256` is
///   the SHA-256 of exactly that blob (`Weights.sha256`).
enum Schema {
  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1: runs, plans, rounds, checkpoints, devices") { db in
      try db.execute(
        sql: """
          CREATE TABLE plans (
            sha256 TEXT PRIMARY KEY NOT NULL,
            name TEXT NOT NULL,
            canonical_json TEXT NOT NULL
          );

          CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            created_at TEXT NOT NULL,
            scenario_json TEXT NOT NULL,
            plan_sha256 TEXT NOT NULL REFERENCES plans(sha256),
            seed INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'running'
              CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
            finished_at TEXT
          );
          CREATE INDEX runs_plan ON runs(plan_sha256);

          CREATE TABLE rounds (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            round INTEGER NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'abandoned')),
            abandon_reason TEXT,
            selected INTEGER NOT NULL,
            reported INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            late INTEGER NOT NULL,
            rejected INTEGER NOT NULL,
            bytes_down INTEGER NOT NULL,
            bytes_up INTEGER NOT NULL,
            train_loss REAL,
            eval_loss REAL,
            eval_accuracy REAL,
            federated_eval_loss REAL,
            federated_eval_accuracy REAL,
            federated_eval_examples INTEGER,
            epsilon REAL,
            wall_seconds REAL NOT NULL,
            PRIMARY KEY (run_id, round)
          );

          CREATE TABLE checkpoints (
            run_id INTEGER NOT NULL,
            round INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            layout_json TEXT NOT NULL,
            weights BLOB NOT NULL,
            PRIMARY KEY (run_id, round),
            FOREIGN KEY (run_id, round) REFERENCES rounds(run_id, round) ON DELETE CASCADE
          );

          CREATE TABLE devices (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            device INTEGER NOT NULL,
            participations INTEGER NOT NULL,
            reports INTEGER NOT NULL,
            dropouts INTEGER NOT NULL,
            last_round INTEGER NOT NULL,
            PRIMARY KEY (run_id, device)
          );
          """)
    }
    migrator.registerMigration("v2: resume state and late reports") { db in
      // What a simulation needs to continue from a round exactly as if it had never stopped,
      // written in the round's own transaction (NULL for network servers and old files).
      try db.execute(sql: "ALTER TABLE rounds ADD COLUMN resume_state BLOB")
    }
    migrator.registerMigration("v3: secure aggregation steps") { db in
      // Per round and protocol step: devices entering, dropouts, bytes each way, server time.
      try db.execute(
        sql: """
          CREATE TABLE secure_aggregation_steps (
            run_id INTEGER NOT NULL,
            round INTEGER NOT NULL,
            step TEXT NOT NULL,
            entered INTEGER NOT NULL,
            dropped INTEGER NOT NULL,
            bytes_up INTEGER NOT NULL,
            bytes_down INTEGER NOT NULL,
            server_seconds REAL NOT NULL,
            PRIMARY KEY (run_id, round, step),
            FOREIGN KEY (run_id, round) REFERENCES rounds(run_id, round) ON DELETE CASCADE
          );
          """)
    }
    migrator.registerMigration("v4: round duration named for its clock, and real seconds") { db in
      // `wall_seconds` held the round's duration on the run's clock, which in a simulation is
      // simulated time, not wall time: renamed for what it holds. Real time sits beside it (NULL
      // in rounds written before it was recorded).
      try db.execute(
        sql: """
          ALTER TABLE rounds RENAME COLUMN wall_seconds TO duration_seconds;
          ALTER TABLE rounds ADD COLUMN real_seconds REAL;
          """)
    }
    migrator.registerMigration("v5: experiment, scenario and variant of a run") { db in
      // Set by `cohort compare`; NULL for other runs and for runs written before this version,
      // which reports then group by name and configuration as before.
      try db.execute(
        sql: """
          ALTER TABLE runs ADD COLUMN experiment TEXT;
          ALTER TABLE runs ADD COLUMN scenario TEXT;
          ALTER TABLE runs ADD COLUMN variant TEXT;
          """)
    }
    migrator.registerMigration("v6: per-device evaluations") { db in
      // Each reporting device's evaluation of the model it received, on its own held-out
      // examples: the rows the round's federated_eval_* columns sum. Files written before this
      // version have none; their rounds keep their sums.
      try db.execute(
        sql: """
          CREATE TABLE device_evaluations (
            run_id INTEGER NOT NULL,
            round INTEGER NOT NULL,
            device INTEGER NOT NULL,
            accuracy REAL NOT NULL,
            loss REAL NOT NULL,
            examples INTEGER NOT NULL,
            PRIMARY KEY (run_id, round, device),
            FOREIGN KEY (run_id, round) REFERENCES rounds(run_id, round) ON DELETE CASCADE
          );
          """)
    }
    migrator.registerMigration("v7: staleness of asynchronous versions") { db in
      // `server.mode: async` writes one row per buffer application (round = model version) with
      // the mean and largest staleness of the updates it folded; NULL for synchronous rounds and
      // for rows written before this version.
      try db.execute(
        sql: """
          ALTER TABLE rounds ADD COLUMN mean_staleness REAL;
          ALTER TABLE rounds ADD COLUMN max_staleness INTEGER;
          """)
    }
    migrator.registerMigration("v8: asynchronous buffer state") { db in
      // A served `server.mode: async` run acknowledges an update only once the buffer holding
      // it is stored here (one row per run, replaced at each acknowledgement); a version's own
      // state goes with its round row (`resume_state`), in the commit's transaction.
      try db.execute(
        sql: """
          CREATE TABLE async_buffers (
            run_id INTEGER PRIMARY KEY REFERENCES runs(id) ON DELETE CASCADE,
            version INTEGER NOT NULL,
            state BLOB NOT NULL
          );
          """)
    }
    migrator.registerMigration("v9: leader leases") { db in
      // One row per run that replicas lead through a lease (`FederationStore`): who holds it,
      // until when, and its fencing token, which grows by one at every change of holder and is
      // never reset (releasing a lease expires it and keeps the row).
      try db.execute(
        sql: """
          CREATE TABLE leases (
            run_id INTEGER PRIMARY KEY NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            holder TEXT NOT NULL,
            token INTEGER NOT NULL CHECK (token >= 1),
            expires_at TEXT NOT NULL
          );
          """)
    }
    migrator.registerMigration("v10: replicas") { db in
      // Replicas of one run on a shared store (PostgreSQL; SQLite carries the same tables so both
      // schemas stay one). `replicas`: each live replica's last word and check-in rate, which pace
      // steering sums. `cohort_places`: the places each replica claimed in a round's shared cohort
      // and the reports it accepted. `partial_aggregates`: each replica's contribution to a round,
      // which the leader combines.
      try db.execute(
        sql: """
          CREATE TABLE replicas (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            replica TEXT NOT NULL,
            check_in_rate REAL NOT NULL,
            seen_at TEXT NOT NULL,
            PRIMARY KEY (run_id, replica)
          );
          CREATE TABLE cohort_places (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            round INTEGER NOT NULL,
            replica TEXT NOT NULL,
            selected INTEGER NOT NULL,
            reported INTEGER NOT NULL,
            PRIMARY KEY (run_id, round, replica)
          );
          CREATE TABLE partial_aggregates (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            round INTEGER NOT NULL,
            replica TEXT NOT NULL,
            contribution BLOB NOT NULL,
            PRIMARY KEY (run_id, round, replica)
          );
          """)
    }
    return migrator
  }
}
