import CohortCore
import Foundation
import Testing

@testable import CohortStore

/// The PostgreSQL store's shared state of replicas: one run found or created, places in a shared
/// cohort, contributions, heartbeats and decided rounds. Each test has a fresh schema.
@Suite(.enabled(if: TestPostgres.shouldRun, TestPostgres.skipReason))
struct PostgresReplicaStoreTests {
  /// Runs `body` with two clients of one fresh schema, as two replicas would have.
  func withTwoStores(_ body: (PostgresStore, PostgresStore) async throws -> Void) async throws {
    try await withLocation(.postgres) { location in
      let postgres = location as! PostgresLocation
      try await body(try await postgres.openPostgres(), try await postgres.openPostgres())
    }
  }

  func open(_ store: PostgresStore, _ scenario: Scenario = makeScenario()) async throws -> (
    run: RunID, created: Bool
  ) {
    try await store.openRun(
      planSHA256: scenario.plan.sha256, name: scenario.plan.name, scenario: scenario, createdAt: fixedDate())
  }

  @Test func openingARunTwiceFindsTheFirst() async throws {
    try await withTwoStores { a, b in
      let first = try await open(a)
      #expect(first.created)
      let again = try await open(a)
      #expect(again.run == first.run && !again.created)
      let other = try await open(b)
      #expect(other.run == first.run && !other.created)
      #expect(try await b.scenario(first.run) == makeScenario())
      // Another plan is another run.
      let different = try await open(b, makeScenario(planName: "other"))
      #expect(different.created && different.run != first.run)
      // A finished run is not served again: the next opening creates one.
      try await a.setStatus(first.run, .finished, at: fixedDate(10))
      let next = try await open(b)
      #expect(next.created && next.run != first.run && next.run != different.run)
    }
  }

  @Test func replicasOpeningTogetherShareOneRun() async throws {
    try await withTwoStores { a, b in
      for _ in 0..<3 {
        let scenario = makeScenario(planName: "together-\(UUID().uuidString.prefix(8))")
        async let x = open(a, scenario)
        async let y = open(b, scenario)
        let (first, second) = try await (x, y)
        #expect(first.run == second.run)
        #expect([first.created, second.created].filter { $0 }.count == 1, "created once")
      }
    }
  }

  @Test func placesStopAtTheTargetAcrossReplicas() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      var claimed: [String: Int] = [:]
      for i in 0..<8 {
        let (store, name) = i % 2 == 0 ? (a, "r1") : (b, "r2")
        if try await store.claimPlace(run: run, round: 1, replica: name, target: 5) {
          claimed[name, default: 0] += 1
        }
      }
      #expect(claimed == ["r1": 3, "r2": 2])
      #expect(try await a.claimPlace(run: run, round: 1, replica: "r1", target: 5) == false)
      // Another round has its own places.
      #expect(try await a.claimPlace(run: run, round: 2, replica: "r1", target: 5))
      // A place given back may be claimed again, by any replica.
      try await b.releasePlace(run: run, round: 1, replica: "r2")
      #expect(try await a.claimPlace(run: run, round: 1, replica: "r1", target: 5))
      #expect(try await b.claimPlace(run: run, round: 1, replica: "r2", target: 5) == false)
      #expect(
        try await b.cohortTally(run: run, round: 1) == [
          "r1": CohortTally(selected: 4, reported: 0), "r2": CohortTally(selected: 1, reported: 0),
        ])
    }
  }

  @Test func concurrentClaimsNeverExceedTheTarget() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      let granted = try await withThrowingTaskGroup(of: Bool.self) { group in
        for i in 0..<12 {
          let (store, name) = i % 2 == 0 ? (a, "r1") : (b, "r2")
          group.addTask { try await store.claimPlace(run: run, round: 3, replica: name, target: 7) }
        }
        var n = 0
        for try await ok in group where ok { n += 1 }
        return n
      }
      #expect(granted == 7)
      let tally = try await a.cohortTally(run: run, round: 3)
      #expect(tally.values.reduce(0) { $0 + $1.selected } == 7)
    }
  }

  /// A batch claim gets what is left of the target, no more, and counts add in batches too.
  @Test func aBatchClaimGetsWhatIsLeft() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      #expect(try await a.claimPlaces(run: run, round: 1, replica: "r1", count: 3, target: 5) == 3)
      #expect(try await b.claimPlaces(run: run, round: 1, replica: "r2", count: 4, target: 5) == 2)
      #expect(try await b.claimPlaces(run: run, round: 1, replica: "r2", count: 4, target: 5) == 0)
      #expect(try await a.claimPlaces(run: run, round: 1, replica: "r1", count: 0, target: 5) == 0)
      try await b.countReports(run: run, round: 1, replica: "r2", count: 2)
      #expect(
        try await a.cohortTally(run: run, round: 1)
          == ["r1": CohortTally(selected: 3, reported: 0), "r2": CohortTally(selected: 2, reported: 2)])
    }
  }

  /// Once a round is in `rounds`, nobody claims a place in it or contributes to it any more: a
  /// replica that has not yet seen the decision cannot select devices for a finished round.
  @Test func aDecidedRoundTakesNoClaimsAndNoContributions() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      #expect(try await a.claimPlaces(run: run, round: 1, replica: "r1", count: 2, target: 5) == 2)
      var record = RoundRecord(round: 1, startedAt: 0, endedAt: 1)
      record.outcome = .abandoned
      record.abandonReason = "too_few_reports"
      try await a.commitRound(
        run, record, checkpoint: nil, devices: [], lateReports: [:], resumeState: nil, secureAggregation: [],
        fencingToken: nil)
      #expect(try await b.claimPlaces(run: run, round: 1, replica: "r2", count: 3, target: 5) == 0)
      try await b.contribute(run: run, round: 1, replica: "r2", contribution: Data([1, 2, 3]))
      #expect(try await a.contributions(run: run, round: 1).isEmpty)
    }
  }

  @Test func releasingAPlaceNeverGoesBelowZero() async throws {
    try await withTwoStores { a, _ in
      let run = try await open(a).run
      #expect(try await a.claimPlace(run: run, round: 1, replica: "r1", target: 2))
      try await a.releasePlace(run: run, round: 1, replica: "r1")
      try await a.releasePlace(run: run, round: 1, replica: "r1")
      // A replica that never claimed one changes nothing.
      try await a.releasePlace(run: run, round: 1, replica: "r9")
      #expect(try await a.cohortTally(run: run, round: 1) == ["r1": CohortTally(selected: 0, reported: 0)])
    }
  }

  @Test func reportsAreCountedPerReplica() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      _ = try await a.claimPlace(run: run, round: 1, replica: "r1", target: 5)
      _ = try await a.claimPlace(run: run, round: 1, replica: "r1", target: 5)
      _ = try await b.claimPlace(run: run, round: 1, replica: "r2", target: 5)
      try await a.countReport(run: run, round: 1, replica: "r1")
      try await a.countReport(run: run, round: 1, replica: "r1")
      try await b.countReport(run: run, round: 1, replica: "r2")
      // A report counted by a replica that claimed nothing in the round still counts.
      try await b.countReport(run: run, round: 1, replica: "r3")
      #expect(
        try await a.cohortTally(run: run, round: 1) == [
          "r1": CohortTally(selected: 2, reported: 2), "r2": CohortTally(selected: 1, reported: 1),
          "r3": CohortTally(selected: 0, reported: 1),
        ])
      #expect(try await a.cohortTally(run: run, round: 2).isEmpty)
    }
  }

  @Test func theFirstContributionOfAReplicaIsKept() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      try await a.contribute(run: run, round: 1, replica: "r1", contribution: Data([1, 2, 3]))
      try await a.contribute(run: run, round: 1, replica: "r1", contribution: Data([9]))
      try await b.contribute(run: run, round: 1, replica: "r2", contribution: Data())
      try await b.contribute(run: run, round: 2, replica: "r2", contribution: Data([4]))
      #expect(try await b.contributions(run: run, round: 1) == ["r1": Data([1, 2, 3]), "r2": Data()])
      #expect(try await a.contributions(run: run, round: 2) == ["r2": Data([4])])
      #expect(try await a.contributions(run: run, round: 3).isEmpty)
      let missing = await asyncStoreError {
        try await a.contribute(
          run: RunID(run.rawValue + 1000), round: 1, replica: "r1", contribution: Data([1]))
      }
      #expect(missing?.code == .notFound)
    }
  }

  @Test func forgettingRoundsDeletesUpToTheRound() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      let other = try await open(a, makeScenario(planName: "other")).run
      for round in 1...3 {
        try await a.contribute(run: run, round: round, replica: "r1", contribution: Data([UInt8(round)]))
        _ = try await a.claimPlace(run: run, round: round, replica: "r1", target: 5)
        try await b.countReport(run: run, round: round, replica: "r2")
      }
      try await a.contribute(run: other, round: 1, replica: "r1", contribution: Data([7]))
      _ = try await a.claimPlace(run: other, round: 1, replica: "r1", target: 5)
      try await b.forgetRounds(run: run, through: 2)
      for round in 1...2 {
        #expect(try await a.contributions(run: run, round: round).isEmpty)
        #expect(try await a.cohortTally(run: run, round: round).isEmpty)
      }
      #expect(try await a.contributions(run: run, round: 3) == ["r1": Data([3])])
      #expect(try await a.cohortTally(run: run, round: 3).count == 2)
      // Another run keeps its own.
      #expect(try await a.contributions(run: other, round: 1) == ["r1": Data([7])])
      #expect(try await a.cohortTally(run: other, round: 1) == ["r1": CohortTally(selected: 1, reported: 0)])
    }
  }

  @Test func heartbeatsReadBack() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      #expect(try await a.replicas(run).isEmpty)
      try await a.heartbeat(run: run, replica: "r2", checkInRate: 1.5, now: fixedDate(1))
      try await b.heartbeat(run: run, replica: "r1", checkInRate: 0.25, now: fixedDate(2))
      try await a.heartbeat(run: run, replica: "r2", checkInRate: 3, now: fixedDate(5))
      // A rate that is not a number counts as none.
      try await b.heartbeat(run: run, replica: "r3", checkInRate: .nan, now: fixedDate(6))
      try await b.heartbeat(run: run, replica: "r4", checkInRate: -2, now: fixedDate(6.5))
      #expect(
        try await b.replicas(run) == [
          ReplicaHeartbeat(replica: "r1", checkInRate: 0.25, seenAt: fixedDate(2)),
          ReplicaHeartbeat(replica: "r2", checkInRate: 3, seenAt: fixedDate(5)),
          ReplicaHeartbeat(replica: "r3", checkInRate: 0, seenAt: fixedDate(6)),
          ReplicaHeartbeat(replica: "r4", checkInRate: 0, seenAt: fixedDate(6.5)),
        ])
      let missing = await asyncStoreError {
        try await a.heartbeat(
          run: RunID(run.rawValue + 1000), replica: "r1", checkInRate: 1, now: fixedDate())
      }
      #expect(missing?.code == .notFound)
    }
  }

  @Test func decidedRoundsAndCheckpointsReadBack() async throws {
    try await withTwoStores { a, b in
      let run = try await open(a).run
      #expect(try await b.round(run: run, round: 1) == nil)
      #expect(try await b.checkpoint(run, through: 5) == nil)
      let first = makeWeights(0.5)
      try await a.commitRound(
        run, record(1), checkpoint: first, devices: [], lateReports: [:], resumeState: nil,
        secureAggregation: [], fencingToken: nil)
      let abandoned = record(2, outcome: .abandoned, reason: "too few devices")
      try await a.commitRound(
        run, abandoned, checkpoint: nil, devices: [], lateReports: [:], resumeState: nil,
        secureAggregation: [], fencingToken: nil)
      let third = makeWeights(-1)
      try await a.commitRound(
        run, record(3), checkpoint: third, devices: [], lateReports: [:], resumeState: nil,
        secureAggregation: [], fencingToken: nil)
      #expect(try await b.round(run: run, round: 1) == record(1))
      #expect(try await b.round(run: run, round: 2) == abandoned)
      #expect(try await b.round(run: run, round: 4) == nil)
      // The latest checkpoint up to the round: round 2 has none, so round 1's.
      let upTo2 = try #require(try await b.checkpoint(run, through: 2))
      #expect(upTo2.round == 1 && bits(upTo2.weights) == bits(first))
      let upTo9 = try #require(try await b.checkpoint(run, through: 9))
      #expect(upTo9.round == 3 && bits(upTo9.weights) == bits(third))
      #expect(try await b.checkpoint(run, through: 0) == nil)
    }
  }
}

extension ReplicaStore {
  /// One place, as a replica's single check-in claims it.
  fileprivate func claimPlace(run: RunID, round: Int, replica: String, target: Int) async throws(CohortError)
    -> Bool
  {
    try await claimPlaces(run: run, round: round, replica: replica, count: 1, target: target) == 1
  }

  fileprivate func countReport(run: RunID, round: Int, replica: String) async throws(CohortError) {
    try await countReports(run: run, round: round, replica: replica, count: 1)
  }
}
