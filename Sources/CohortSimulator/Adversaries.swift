public import CohortCore
public import CohortML
public import CohortProtocol

/// The scenario's attacking devices and what they send, for studying robust aggregation.
/// Which devices attack is drawn once per device from the scenario's seed, so every strategy
/// compared on a scenario faces the same attackers.
public struct Adversaries: Sendable {
  public let plan: AdversaryPlan
  public let seed: UInt64

  public init(plan: AdversaryPlan, seed: UInt64) {
    self.plan = plan
    self.seed = seed
  }

  public func includes(_ device: DeviceID) -> Bool {
    var rng = RandomStream(seed: seed, purpose: "adversary", device: device)
    return rng.uniform() < plan.fraction
  }

  /// Whether the attack changes the data a device trains on rather than what it sends.
  public var poisonsData: Bool { plan.attack == .labelFlip }

  /// Labels flipped to `classes − 1 − y` on the device's own examples.
  public func poisoned(_ data: Dataset, indices: [Int]?) -> Dataset {
    var own = indices.map { data.subset($0) } ?? data
    let top = Int32(own.classes - 1)
    for i in own.labels.indices { own.labels[i] = top - own.labels[i] }
    return own
  }

  /// What an attacking device sends in place of its honest update.
  public func attacked(_ update: Weights, device: DeviceID, round: Int) -> Weights {
    var sent = update
    switch plan.attack {
    case .signFlip(let factor): sent.scale(by: -Float(factor))
    case .scale(let factor): sent.scale(by: Float(factor))
    case .gaussianNoise(let sd):
      var rng = RandomStream(seed: seed, purpose: "attack", round: round, device: device)
      for i in sent.values.indices { sent.values[i] = Float(rng.normal(mean: 0, standardDeviation: sd)) }
    case .labelFlip: break
    }
    return sent
  }
}
