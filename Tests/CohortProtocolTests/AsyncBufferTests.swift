import CohortAggregation
import CohortCore
import CohortProtocol
import Foundation
import Testing

@Suite struct AsyncBufferTests {
  static func machine(
    dimension: Int = 2, concurrency: Int = 10, buffer: Int = 2, maximumStaleness: Int = 10,
    staleness: StalenessPlan = .polynomial(a: 1), weighted: Bool = true, versions: Int = 100
  ) -> AsyncBuffer {
    AsyncBuffer(
      configuration: .init(
        dimension: dimension, concurrency: concurrency, bufferSize: buffer,
        maximumStaleness: maximumStaleness,
        weighting: StalenessWeighting(staleness), weightedByExamples: weighted, maximumExamples: 1000,
        versions: versions))
  }

  static func report(_ device: Int, _ version: Int, _ update: [Float], _ examples: Int = 1)
    -> AsyncBuffer.Report
  {
    AsyncBuffer.Report(device: device, version: version, update: update, examples: examples)
  }

  static func applications(_ actions: [AsyncBuffer.Action]) -> [AsyncBuffer.Application] {
    actions.compactMap {
      if case .apply(let a) = $0 { return a }
      return nil
    }
  }

  @Test func admitsUpToTheConcurrencyAndADropoutFreesASlot() {
    var m = Self.machine(concurrency: 2)
    #expect(m.admit(1) == [.train(device: 1, version: 0)])
    #expect(m.admit(1) == [.turnAway(device: 1, .inFlight)])
    #expect(m.admit(2) == [.train(device: 2, version: 0)])
    #expect(m.admit(3) == [.turnAway(device: 3, .full)])
    #expect(m.freeSlots == 0)
    #expect(m.dropped(2) && !m.dropped(2))
    #expect(m.admit(3) == [.train(device: 3, version: 0)])
    #expect(m.counts.admitted == 3 && m.counts.dropped == 1 && m.counts.turnedAway == 2)
    // A dropped device's late report does not count.
    #expect(m.report(Self.report(2, 0, [1, 1])) == [.refuse(device: 2, .notInFlight)])
  }

  /// Hand-computed: weight (1 + s)^−1 times examples; the mean divides by Σ examples.
  @Test func foldsStalenessAndExampleWeightedUpdatesAndAppliesEveryKBuffers() {
    var m = Self.machine()
    _ = m.admit(1)
    _ = m.admit(2)
    // s = 0, weight 1, 2 examples: sum [2, 4], denominator 2.
    #expect(m.report(Self.report(1, 0, [1, 2], 2)) == [.acknowledge(device: 1, staleness: 0, weight: 1)])
    _ = m.admit(3)
    // s = 0, 1 example: sum [5, 4], denominator 3 → version 1 with mean [5/3, 4/3].
    let first = Self.applications(m.report(Self.report(2, 0, [3, 0], 1)))
    #expect(first.count == 1)
    #expect(first.first?.version == 1 && first.first?.sum == [5, 4] && first.first?.denominator == 3)
    #expect(first.first?.mean == [Float(5.0 / 3), Float(4.0 / 3)])
    #expect(first.first?.meanStaleness == 0 && first.first?.maximumStaleness == 0)
    #expect(first.first?.devices == [1, 2] && first.first?.examples == 3 && first.first?.folded == 2)
    #expect(m.version == 1)
    #expect(m.admit(4) == [.train(device: 4, version: 1)])
    // Device 3 trained on version 0: s = 1, weight ½, 4 examples: sum [4, 4], denominator 4.
    #expect(m.report(Self.report(3, 0, [2, 2], 4)) == [.acknowledge(device: 3, staleness: 1, weight: 0.5)])
    // s = 0, 1 example: sum [4, 8], denominator 5 → mean [0.8, 1.6], staleness mean ½, max 1.
    let second = Self.applications(m.report(Self.report(4, 1, [0, 4], 1)))
    #expect(second.first?.version == 2 && second.first?.sum == [4, 8] && second.first?.denominator == 5)
    #expect(second.first?.mean == [0.8, 1.6])
    #expect(second.first?.meanStaleness == 0.5 && second.first?.maximumStaleness == 1)
    #expect(m.counts.folded == 4 && m.counts.applications == 2)
  }

  /// Counted once each, the mean is FedBuff's Σ s(τᵢ)Δᵢ / K.
  @Test func unweightedBuffersDivideByK() {
    var m = Self.machine(buffer: 2, weighted: false)
    _ = m.admit(1)
    _ = m.report(Self.report(1, 0, [1, 1], 50))
    _ = m.admit(2)
    _ = m.admit(3)
    _ = m.report(Self.report(2, 0, [1, 1], 7))  // version 1
    // Device 3: s = 1, weight ½; device 4: s = 0.
    _ = m.report(Self.report(3, 0, [4, 0], 9))
    _ = m.admit(4)
    let a = Self.applications(m.report(Self.report(4, 1, [0, 2], 3))).first
    #expect(a?.denominator == 2 && a?.sum == [2, 2] && a?.mean == [1, 1] && a?.examples == 12)
  }

  @Test func refusesTooStaleUpdatesAndCountsThem() {
    var m = Self.machine(concurrency: 10, buffer: 1, maximumStaleness: 1)
    _ = m.admit(9)  // trains on version 0
    for device in 1...2 {
      _ = m.admit(device)
      _ = m.report(Self.report(device, m.version, [1, 1]))
    }
    #expect(m.version == 2)
    // s = 2 > 1: refused, counted, and its slot is free again.
    #expect(m.report(Self.report(9, 0, [1, 1])) == [.refuse(device: 9, .tooStale)])
    #expect(m.counts.tooStale == 1 && m.inFlightCount == 0 && m.counts.folded == 2)
    #expect(AsyncBuffer.Refusal.tooStale.rejection == .late)
    // At s = 1 it still counts, weighted ½.
    _ = m.admit(5)
    _ = m.admit(6)
    _ = m.report(Self.report(6, 2, [1, 1]))
    #expect(m.report(Self.report(5, 2, [1, 1])).first == .acknowledge(device: 5, staleness: 1, weight: 0.5))
  }

  @Test func refusesDuplicatesStrangersWrongVersionsAndBadFigures() {
    var m = Self.machine(buffer: 5)
    _ = m.admit(1)
    _ = m.report(Self.report(1, 0, [1, 1]))
    #expect(m.report(Self.report(1, 0, [1, 1])) == [.refuse(device: 1, .duplicate)])
    // A device whose update on this version counted waits for the next.
    #expect(m.admit(1) == [.turnAway(device: 1, .alreadyReported)])
    #expect(m.report(Self.report(77, 0, [1, 1])) == [.refuse(device: 77, .notInFlight)])
    _ = m.admit(2)
    #expect(m.report(Self.report(2, 3, [1, 1])) == [.refuse(device: 2, .wrongVersion)])
    #expect(m.inFlightCount == 1)  // still training on version 0
    #expect(m.report(Self.report(2, 0, [1])) == [.refuse(device: 2, .malformed)])
    _ = m.admit(3)
    #expect(m.report(Self.report(3, 0, [1, .nan])) == [.refuse(device: 3, .malformed)])
    _ = m.admit(4)
    #expect(m.report(Self.report(4, 0, [1, 1], 0)) == [.refuse(device: 4, .outOfRange)])
    _ = m.admit(5)
    #expect(m.report(Self.report(5, 0, [1, 1], 1001)) == [.refuse(device: 5, .outOfRange)])
    let c = m.counts
    #expect(
      c.duplicate == 1 && c.notInFlight == 1 && c.wrongVersion == 1 && c.malformed == 2 && c.outOfRange == 2)
    #expect(c.folded == 1 && m.inFlightCount == 0)
  }

  @Test func finishesAfterTheLastVersion() {
    var m = Self.machine(buffer: 1, versions: 1)
    _ = m.admit(1)
    _ = m.admit(2)
    let actions = m.report(Self.report(1, 0, [1, 1]))
    #expect(actions.count == 4)
    #expect(actions.last == .finish(version: 1) && actions[2] == .cancel(device: 2))
    #expect(m.state == .finished(version: 1))
    #expect(m.admit(3) == [.turnAway(device: 3, .finished)])
    #expect(m.report(Self.report(2, 0, [1, 1])) == [.refuse(device: 2, .finished)])
    // Extending the run (more versions) collects again from the last one.
    var config = m.configuration
    config.versions = 3
    let extended = try? AsyncBuffer(configuration: config, restoring: m.snapshot)
    #expect(extended?.version == 1 && extended?.freeSlots == 10)
  }

  /// A kill -9 after 3 of K = 5 folds: the driver persisted the snapshot before acknowledging
  /// each; the restored machine folds the other 2 to the same buffer, bit for bit, and refuses a
  /// replay of an acknowledged report.
  @Test func resumeInTheMiddleOfABufferNeitherFoldsTwiceNorLosesAnUpdate() throws {
    var rng = RandomStream(seed: 11, purpose: "async-buffer-test")
    let reports = (1...5).map { device in
      Self.report(device, 0, (0..<64).map { _ in Float(rng.normal()) }, 1 + rng.int(below: 50))
    }
    func started() -> AsyncBuffer {
      var m = Self.machine(dimension: 64, buffer: 5, staleness: .polynomial(a: 0.5))
      for r in reports { _ = m.admit(r.device) }
      return m
    }
    var whole = started()
    let uninterrupted = reports.flatMap { whole.report($0) }

    var before = started()
    var acknowledged: [AsyncBuffer.Action] = []
    for r in reports.prefix(3) { acknowledged += before.report(r) }
    // Sorted keys: JSONEncoder's key order is otherwise unspecified.
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let saved = try encoder.encode(before.snapshot)
    let decoded = try JSONDecoder().decode(AsyncBuffer.Snapshot.self, from: saved)
    #expect(decoded == before.snapshot)
    var after = try AsyncBuffer(configuration: before.configuration, restoring: decoded)
    #expect(try encoder.encode(after.snapshot) == saved)
    // The device whose acknowledgement was lost in the crash sends its report again.
    #expect(after.report(reports[2]) == [.refuse(device: 3, .duplicate)])
    var resumed = acknowledged
    for r in reports.suffix(2) { resumed += after.report(r) }
    #expect(resumed == uninterrupted)
    let application = Self.applications(resumed).first
    #expect(application?.folded == 5 && application?.devices == [1, 2, 3, 4, 5])
    #expect(after.counts.folded == 5 && after.counts.duplicate == 1 && after.version == 1)
  }

  @Test func aSnapshotThatDoesNotFitThePlanIsRefused() throws {
    var m = Self.machine(dimension: 2)
    _ = m.admit(1)
    _ = m.report(Self.report(1, 0, [1, 1]))
    let other = Self.machine(dimension: 3).configuration
    #expect(throws: CohortError.self) { try AsyncBuffer(configuration: other, restoring: m.snapshot) }
    var smallBuffer = m.configuration
    smallBuffer.bufferSize = 1
    #expect(throws: CohortError.self) { try AsyncBuffer(configuration: smallBuffer, restoring: m.snapshot) }
  }

  @Test func aCorruptSnapshotCannotMakeALaterFoldOverflow() throws {
    var m = Self.machine(dimension: 2)
    _ = m.admit(1)
    _ = m.report(Self.report(1, 0, [1, 1]))
    guard case .collecting(var c) = m.snapshot.state else {
      Issue.record("expected a buffer being filled")
      return
    }
    c.buffer.stalenessSum = .max
    #expect(throws: CohortError.self) {
      try AsyncBuffer(
        configuration: m.configuration, restoring: .init(state: .collecting(c), counts: m.counts))
    }
    var counts = m.counts
    counts.folded = .max
    #expect(throws: CohortError.self) {
      try AsyncBuffer(
        configuration: m.configuration, restoring: .init(state: m.snapshot.state, counts: counts))
    }
    // The snapshot as written restores.
    #expect(throws: Never.self) { try AsyncBuffer(configuration: m.configuration, restoring: m.snapshot) }
  }

  /// A device whose connection ended frees its slot but may still send the update it trained,
  /// once, until the driver forgets it; one that comes too stale is refused as such; at most
  /// `leftLimit` such devices are remembered, and a snapshot keeps them.
  @Test func aDeviceThatLeftMayStillReportOnceUntilForgotten() throws {
    var m = Self.machine(concurrency: 2, buffer: 1, maximumStaleness: 1)
    _ = m.admit(1)
    _ = m.admit(2)
    let left = m.dropped(1, mayStillReport: true)
    #expect(left && m.freeSlots == 1)
    #expect(m.admit(3) == [.train(device: 3, version: 0)])
    let restored = try AsyncBuffer(
      configuration: m.configuration,
      restoring: JSONDecoder().decode(AsyncBuffer.Snapshot.self, from: JSONEncoder().encode(m.snapshot)))
    #expect(restored.snapshot == m.snapshot)
    let folded = m.report(Self.report(1, 0, [1, 1]))
    #expect(Self.applications(folded).count == 1)
    let replay = m.report(Self.report(1, 0, [1, 1]))
    #expect(replay == [.refuse(device: 1, .duplicate)])
    // Device 2 leaves and comes back too late: two versions on, its update is too stale.
    m.dropped(2, mayStillReport: true)
    _ = m.report(Self.report(3, 0, [1, 1]))
    _ = m.admit(4)
    _ = m.report(Self.report(4, 2, [1, 1]))
    let stale = m.report(Self.report(2, 0, [1, 1]))
    #expect(stale == [.refuse(device: 2, .tooStale)])
    // Only the latest `concurrency` devices that left are remembered.
    var n = Self.machine(concurrency: 2)
    for d in 1...3 {
      _ = n.admit(d)
      n.dropped(d, mayStillReport: true)
    }
    let forgotten = n.report(Self.report(1, 0, [1, 1]))
    #expect(forgotten == [.refuse(device: 1, .notInFlight)])
    let remembered = n.report(Self.report(3, 0, [1, 1]))
    #expect(remembered.contains(.acknowledge(device: 3, staleness: 0, weight: 1)))
    // A device dropped at its deadline may not, nor one the driver forgot.
    _ = n.admit(5)
    n.dropped(5)
    let late = n.report(Self.report(5, 0, [1, 1]))
    #expect(late == [.refuse(device: 5, .notInFlight)])
    _ = n.admit(6)
    n.dropped(6, mayStillReport: true)
    n.forget(6)
    let forgot = n.report(Self.report(6, 0, [1, 1]))
    #expect(forgot == [.refuse(device: 6, .notInFlight)])
    // Admitted again to the version it left, a device's new participation stands for it: once
    // that is dropped at its deadline, nothing of the device on that version is taken.
    var o = Self.machine(concurrency: 2)
    _ = o.admit(7)
    o.dropped(7, mayStillReport: true)
    #expect(o.admit(7) == [.train(device: 7, version: 0)])
    o.dropped(7)
    let gone = o.report(Self.report(7, 0, [1, 1]))
    #expect(gone == [.refuse(device: 7, .notInFlight)])
  }

  @Test func configurationFollowsThePlan() throws {
    let plan = try Plan.parse(
      yaml: """
        name: p
        model: {kind: logistic_regression, inputs: 4, classes: 2}
        server:
          rounds: 7
          mode: async
          async: {concurrency: 30, buffer: 4, staleness: {kind: hinge, a: 2, b: 1}, max_staleness: 9}
          strategy: {kind: fedavg, weighted: false}
        """, file: "p.yaml")
    let c = try #require(AsyncBuffer.Configuration(plan: plan, dimension: 10))
    #expect(c.concurrency == 30 && c.bufferSize == 4 && c.maximumStaleness == 9 && c.versions == 7)
    #expect(c.weighting == StalenessWeighting(.hinge(a: 2, b: 1)) && !c.weightedByExamples)
    var sync = plan
    sync.server.mode = .sync
    #expect(AsyncBuffer.Configuration(plan: sync, dimension: 10) == nil)
  }
}
