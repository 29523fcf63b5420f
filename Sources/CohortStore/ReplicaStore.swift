public import CohortCore
public import Foundation

/// What replicas of one run share besides the run's rounds and lease (PostgreSQL only): which
/// replicas are alive and how fast devices check in at each, the places each claimed in a round's
/// shared cohort and the reports it accepted, and each replica's partial aggregate of a round for
/// the leader to combine. A replica is named by its holder string (`FederationStore`'s lease
/// holder): one server process's lifetime.
public protocol ReplicaStore: FederationStore {
  /// Finds the plan's run that did not finish, or creates one, in one locked transaction: replicas
  /// started together all serve the same run.
  func openRun(planSHA256: String, name: String, scenario: Scenario, createdAt: Date)
    async throws(CohortError) -> (run: RunID, created: Bool)

  /// Records that `replica` is alive at `now`, with its devices' check-in rate (per second).
  func heartbeat(run: RunID, replica: String, checkInRate: Double, now: Date) async throws(CohortError)

  /// Every replica that ever served the run, with its last heartbeat.
  func replicas(_ run: RunID) async throws(CohortError) -> [ReplicaHeartbeat]

  /// Claims up to `count` places in `round`'s cohort for `replica`, and returns how many it got:
  /// fewer (even none) when the replicas together have claimed `target` places, none once the
  /// round is decided (read in the claim's transaction: a claim racing the round's commit may
  /// still land, for a round nobody waits for any more). Claims of one round are serialised by a
  /// lock of their own.
  func claimPlaces(run: RunID, round: Int, replica: String, count: Int, target: Int) async throws(CohortError)
    -> Int

  /// Gives back a place `replica` claimed in `round` (its device left before the round started).
  func releasePlace(run: RunID, round: Int, replica: String) async throws(CohortError)

  /// Counts `count` reports `replica` accepted in `round`, toward the shared goal.
  func countReports(run: RunID, round: Int, replica: String, count: Int) async throws(CohortError)

  /// The places claimed and the reports accepted in `round`, by replica.
  func cohortTally(run: RunID, round: Int) async throws(CohortError) -> [String: CohortTally]

  /// Stores `replica`'s contribution to `round`; a second contribution of the same replica to
  /// the same round is ignored (the first one counts), and so is one to a round already decided
  /// (one racing the commit may land; it is deleted with the round's other rows).
  func contribute(run: RunID, round: Int, replica: String, contribution: Data) async throws(CohortError)

  /// The contributions to `round`, by replica.
  func contributions(run: RunID, round: Int) async throws(CohortError) -> [String: Data]

  /// Forgets the places and contributions of rounds up to `round` (once it is decided).
  func forgetRounds(run: RunID, through round: Int) async throws(CohortError)

  /// The record of `round` if it has been written (committed or abandoned).
  func round(run: RunID, round: Int) async throws(CohortError) -> RoundRecord?

  /// The checkpoint of the latest round up to `round` that has one.
  func checkpoint(_ run: RunID, through round: Int) async throws(CohortError) -> (
    round: Int, weights: Weights
  )?
}

/// A replica's last word: when, and how fast devices checked in at it.
public struct ReplicaHeartbeat: Sendable, Hashable {
  public var replica: String
  public var checkInRate: Double
  public var seenAt: Date

  public init(replica: String, checkInRate: Double, seenAt: Date) {
    self.replica = replica
    self.checkInRate = checkInRate
    self.seenAt = seenAt
  }
}

/// One replica's share of a round's cohort.
public struct CohortTally: Sendable, Hashable {
  public var selected: Int
  public var reported: Int

  public init(selected: Int, reported: Int) {
    self.selected = selected
    self.reported = reported
  }
}
