public import CohortCore
public import Foundation
import PostgresNIO

extension PostgresStore: ReplicaStore {
  public func openRun(planSHA256: String, name: String, scenario: Scenario, createdAt: Date)
    async throws(CohortError) -> (run: RunID, created: Bool)
  {
    // Held until the transaction ends: replicas of one plan starting together wait here, and
    // the others find the run the first one created.
    let key = "cohort-run:" + planSHA256
    return try await transaction("finding or creating the run of plan \(name)") { c in
      try await c.query("SELECT pg_advisory_xact_lock(hashtext(\(key)))", logger: self.logger).allRows()
      let existing = try await c.query(
        """
        SELECT id FROM runs WHERE plan_sha256 = \(planSHA256) AND status IN ('running', 'interrupted')
        ORDER BY id DESC LIMIT 1
        """, logger: self.logger
      ).allRows().first
      if let existing { return (RunID(try existing.makeRandomAccess()["id"].decode(Int64.self)), false) }
      let id = try await self.insertRun(
        c, name: name, scenario: scenario, createdAt: createdAt, labels: RunLabels())
      return (id, true)
    }
  }

  public func heartbeat(run: RunID, replica: String, checkInRate: Double, now: Date) async throws(CohortError)
  {
    let rate = checkInRate.isFinite ? max(0, checkInRate) : 0
    try await transaction("recording replica \(replica) of run \(run)") { c in
      try await self.requireRun(c, run)
      try await c.query(
        """
        INSERT INTO replicas (run_id, replica, check_in_rate, seen_at)
        VALUES (\(run.rawValue), \(replica), \(rate), \(now))
        ON CONFLICT (run_id, replica) DO UPDATE SET
          check_in_rate = excluded.check_in_rate, seen_at = excluded.seen_at
        """, logger: self.logger
      ).allRows()
    }
  }

  public func replicas(_ run: RunID) async throws(CohortError) -> [ReplicaHeartbeat] {
    try await transaction("reading the replicas of run \(run)") { c in
      try await c.query(
        "SELECT replica, check_in_rate, seen_at FROM replicas WHERE run_id = \(run.rawValue) ORDER BY replica",
        logger: self.logger
      ).allRows().map { row in
        let r = row.makeRandomAccess()
        return ReplicaHeartbeat(
          replica: try r["replica"].decode(String.self),
          checkInRate: try r["check_in_rate"].decode(Double.self),
          seenAt: try r["seen_at"].decode(Date.self))
      }
    }
  }

  public func claimPlaces(run: RunID, round: Int, replica: String, count: Int, target: Int)
    async throws(CohortError) -> Int
  {
    guard count > 0 else { return 0 }
    // Claims of one round queue on their own lock, not the run's row, which a commit holds while
    // it writes a checkpoint; a round already decided has no places left.
    let key = "cohort-places:\(run.rawValue):\(round)"
    return try await transaction("claiming places in round \(round) of run \(run)") { c in
      try await c.query("SELECT pg_advisory_xact_lock(hashtext(\(key)))", logger: self.logger).allRows()
      let decided = try await c.query(
        "SELECT 1 FROM rounds WHERE run_id = \(run.rawValue) AND round = \(round)", logger: self.logger
      ).allRows()
      guard decided.isEmpty else { return 0 }
      let taken =
        try await c.query(
          """
          SELECT COALESCE(SUM(selected), 0)::BIGINT AS taken FROM cohort_places
          WHERE run_id = \(run.rawValue) AND round = \(round)
          """, logger: self.logger
        ).allRows().first.map { try $0.makeRandomAccess()["taken"].decode(Int.self) } ?? 0
      let granted = max(0, min(count, target - taken))
      guard granted > 0 else { return 0 }
      try await c.query(
        """
        INSERT INTO cohort_places (run_id, round, replica, selected, reported)
        VALUES (\(run.rawValue), \(round), \(replica), \(granted), 0)
        ON CONFLICT (run_id, round, replica) DO UPDATE SET selected = cohort_places.selected + \(granted)
        """, logger: self.logger
      ).allRows()
      return granted
    }
  }

  public func releasePlace(run: RunID, round: Int, replica: String) async throws(CohortError) {
    try await transaction("giving back a place in round \(round) of run \(run)") { c in
      try await c.query(
        """
        UPDATE cohort_places SET selected = GREATEST(selected - 1, 0)
        WHERE run_id = \(run.rawValue) AND round = \(round) AND replica = \(replica)
        """, logger: self.logger
      ).allRows()
    }
  }

  public func countReports(run: RunID, round: Int, replica: String, count: Int) async throws(CohortError) {
    guard count > 0 else { return }
    try await transaction("counting reports of round \(round) of run \(run)") { c in
      try await c.query(
        """
        INSERT INTO cohort_places (run_id, round, replica, selected, reported)
        VALUES (\(run.rawValue), \(round), \(replica), 0, \(count))
        ON CONFLICT (run_id, round, replica) DO UPDATE SET reported = cohort_places.reported + \(count)
        """, logger: self.logger
      ).allRows()
    }
  }

  public func cohortTally(run: RunID, round: Int) async throws(CohortError) -> [String: CohortTally] {
    try await transaction("reading the cohort of round \(round) of run \(run)") { c in
      var tally: [String: CohortTally] = [:]
      for row in try await c.query(
        """
        SELECT replica, selected, reported FROM cohort_places
        WHERE run_id = \(run.rawValue) AND round = \(round)
        """, logger: self.logger
      ).allRows() {
        let r = row.makeRandomAccess()
        tally[try r["replica"].decode(String.self)] = CohortTally(
          selected: try r["selected"].decode(Int.self), reported: try r["reported"].decode(Int.self))
      }
      return tally
    }
  }

  public func contribute(run: RunID, round: Int, replica: String, contribution: Data)
    async throws(CohortError)
  {
    try await transaction("storing the contribution of replica \(replica) to round \(round) of run \(run)") {
      c in
      try await self.requireRun(c, run)
      try await c.query(
        """
        INSERT INTO partial_aggregates (run_id, round, replica, contribution)
        SELECT \(run.rawValue), \(round), \(replica), \(contribution)
        WHERE NOT EXISTS (SELECT 1 FROM rounds WHERE run_id = \(run.rawValue) AND round = \(round))
        ON CONFLICT (run_id, round, replica) DO NOTHING
        """, logger: self.logger
      ).allRows()
    }
  }

  public func contributions(run: RunID, round: Int) async throws(CohortError) -> [String: Data] {
    try await transaction("reading the contributions to round \(round) of run \(run)") { c in
      var out: [String: Data] = [:]
      for row in try await c.query(
        """
        SELECT replica, contribution FROM partial_aggregates
        WHERE run_id = \(run.rawValue) AND round = \(round)
        """, logger: self.logger
      ).allRows() {
        let r = row.makeRandomAccess()
        out[try r["replica"].decode(String.self)] = try r["contribution"].decode(Data.self)
      }
      return out
    }
  }

  public func forgetRounds(run: RunID, through round: Int) async throws(CohortError) {
    try await transaction("forgetting the shared state of run \(run) up to round \(round)") { c in
      try await c.query(
        "DELETE FROM partial_aggregates WHERE run_id = \(run.rawValue) AND round <= \(round)",
        logger: self.logger
      ).allRows()
      try await c.query(
        "DELETE FROM cohort_places WHERE run_id = \(run.rawValue) AND round <= \(round)", logger: self.logger
      ).allRows()
    }
  }

  public func round(run: RunID, round: Int) async throws(CohortError) -> RoundRecord? {
    try await transaction("reading round \(round) of run \(run)") { c in
      try await c.query(
        "SELECT * FROM rounds WHERE run_id = \(run.rawValue) AND round = \(round)", logger: self.logger
      ).allRows().first.map { try Self.roundRecord($0.makeRandomAccess()) }
    }
  }
}
