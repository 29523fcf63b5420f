import CohortAggregation
import CohortCore
import Testing

/// Partial aggregates of replicas: merging halves, and saving and restoring them.
@Suite struct RoundAggregateMergeTests {
  static let layout = WeightsLayout([TensorSpec("w", [2, 2])])
  static let global = Weights(layout: layout, values: [0.5, -0.25, 1, 0])

  /// Eight seeded updates, each with a SCAFFOLD control delta.
  static let clients: [ClientUpdate] = {
    var rng = RandomStream(seed: 11, purpose: "round-aggregate-merge-tests")
    func values() -> [Float] { (0..<4).map { _ in Float(rng.uniform() * 2 - 1) } }
    return (0..<8).map { i in
      ClientUpdate(
        device: i, update: Weights(layout: layout, values: values()), examples: 1 + rng.int(below: 50),
        controlDelta: Weights(layout: layout, values: values()))
    }
  }()

  static func fold(_ s: ServerStrategy, _ updates: ArraySlice<ClientUpdate>) -> RoundAggregate {
    var round = s.makeRound()
    for u in updates { s.fold(u, into: &round) }
    return round
  }

  static func step(_ s: ServerStrategy, _ round: RoundAggregate) -> (Weights?, StrategyState) {
    var state = s.initialState()
    let model = s.nextGlobal(from: global, round, state: &state)
    return (model, state)
  }

  static func close(_ a: [Float]?, _ b: [Float]?) -> Bool {
    guard let a, let b else { return a == nil && b == nil }
    guard a.count == b.count else { return false }
    return zip(a, b).allSatisfy { abs(Double($0) - Double($1)) <= 1e-6 }
  }

  static func restored(_ round: RoundAggregate, _ s: ServerStrategy) throws(CohortError) -> RoundAggregate {
    var w = SnapshotWriter()
    round.save(into: &w)
    var r = SnapshotReader(w.bytes)
    let out = try RoundAggregate(restoring: &r, strategy: s)
    #expect(r.isAtEnd)
    return out
  }

  @Test(arguments: [StrategyPlan.Rule.fedavg(weighted: true), .fedavg(weighted: false), .fedadam(.init())])
  func mergedHalvesEqualFoldingAll(_ rule: StrategyPlan.Rule) throws {
    let s = ServerStrategy(plan: StrategyPlan(rule), layout: Self.layout)
    var first = Self.fold(s, Self.clients[0..<3])
    first.merge(Self.fold(s, Self.clients[3...]))
    let all = Self.fold(s, Self.clients[...])
    #expect(first.count == all.count && first.examples == all.examples)
    let (merged, mergedState) = Self.step(s, first)
    let (whole, wholeState) = Self.step(s, all)
    #expect(Self.close(merged?.values, whole?.values))
    #expect(Self.close(mergedState.firstMoment?.map(Float.init), wholeState.firstMoment?.map(Float.init)))
  }

  @Test func scaffoldMergesItsControlSum() throws {
    let s = ServerStrategy(
      plan: StrategyPlan(.scaffold(serverLearningRate: 0.5)), layout: Self.layout, population: 20)
    var first = Self.fold(s, Self.clients[0..<5])
    first.merge(Self.fold(s, Self.clients[5...]))
    let (merged, mergedState) = Self.step(s, first)
    let (whole, wholeState) = Self.step(s, Self.fold(s, Self.clients[...]))
    #expect(Self.close(merged?.values, whole?.values))
    #expect(wholeState.control != nil)
    #expect(Self.close(mergedState.control, wholeState.control))
    #expect(mergedState.control != s.initialState().control, "the control variate moved")
  }

  @Test func mergingAnEmptyAggregateChangesNothing() {
    let s = ServerStrategy(plan: StrategyPlan(.fedavg(weighted: true)), layout: Self.layout)
    var round = Self.fold(s, Self.clients[...])
    round.merge(s.makeRound())
    #expect(round.count == 8)
    #expect(Self.step(s, round).0?.values == Self.step(s, Self.fold(s, Self.clients[...])).0?.values)
    var empty = s.makeRound()
    empty.merge(s.makeRound())
    #expect(empty.count == 0 && Self.step(s, empty).0 == nil)
  }

  @Test func aSavedAggregateRestoresEqual() throws {
    for s in [
      ServerStrategy(plan: StrategyPlan(.fedavg(weighted: true)), layout: Self.layout),
      ServerStrategy(
        plan: StrategyPlan(.scaffold(serverLearningRate: 1)), layout: Self.layout, population: 8),
    ] {
      let round = Self.fold(s, Self.clients[2..<6])
      let back = try Self.restored(round, s)
      #expect(back.count == 4 && back.examples == round.examples)
      let (a, aState) = Self.step(s, back)
      let (b, bState) = Self.step(s, round)
      #expect(a?.values == b?.values && aState == bState)
    }
  }

  /// The bytes `save` writes for one FedAvg sum, with the given fields.
  static func crafted(
    values: [Double], weight: Double = 1, count: Int = 1, examples: Int = 1, total: (Int, Int)? = nil
  )
    -> [UInt8]
  {
    var w = SnapshotWriter()
    w.write(true)
    w.write(values)
    w.write(weight)
    w.write(count)
    w.write(examples)
    w.write(false)  // no control sum
    w.write(false)  // no q-FedAvg sum
    w.write(0.0)
    w.write(total?.0 ?? count)
    w.write(total?.1 ?? examples)
    return w.bytes
  }

  static func refusal(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> CohortError? {
    let s = ServerStrategy(plan: StrategyPlan(.fedavg(weighted: true)), layout: layout)
    var r = SnapshotReader(bytes)
    do {
      _ = try RoundAggregate(restoring: &r, strategy: s)
      Issue.record("the aggregate was accepted", sourceLocation: sourceLocation)
      return nil
    } catch {
      return error
    }
  }

  @Test func craftedBytesMatchSave() throws {
    let s = ServerStrategy(plan: StrategyPlan(.fedavg(weighted: true)), layout: Self.layout)
    var r = SnapshotReader(Self.crafted(values: [2, 4, 6, 8], weight: 2, count: 2, examples: 2))
    let round = try RoundAggregate(restoring: &r, strategy: s)
    #expect(Self.step(s, round).0?.values == [1.5, 1.75, 4, 4])
  }

  @Test func aVectorOfTheWrongLengthIsRefused() {
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3]))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4, 5]))?.code == .storage)
  }

  @Test func negativeCountsAreRefused() {
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], count: -1))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], examples: -1))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], total: (-1, 1)))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], total: (1, -1)))?.code == .storage)
  }

  /// Counts no round can have: merging them into another replica's would overflow (and trap the
  /// leader, and then every replica that takes the lease after it).
  @Test func absurdCountsAreRefused() {
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], count: Int.max))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], examples: Int.max))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], total: (Int.max, 1)))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], total: (1, Int.max)))?.code == .storage)
  }

  @Test func aWeightThatIsNotFiniteOrIsNegativeIsRefused() {
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], weight: .infinity))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], weight: .nan))?.code == .storage)
    #expect(Self.refusal(Self.crafted(values: [1, 2, 3, 4], weight: -1))?.code == .storage)
  }

  @Test func aControlSumForAStrategyWithoutOneIsRefused() {
    let scaffold = ServerStrategy(
      plan: StrategyPlan(.scaffold(serverLearningRate: 1)), layout: Self.layout, population: 8)
    var w = SnapshotWriter()
    Self.fold(scaffold, Self.clients[0..<2]).save(into: &w)
    #expect(Self.refusal(w.bytes)?.code == .storage)
  }
}
