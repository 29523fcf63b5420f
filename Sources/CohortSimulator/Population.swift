public import CohortCore
public import CohortProtocol
import Foundation

/// A simulation's virtual devices, as functions of (scenario seed, purpose, round, device).
///
/// Nothing is stored per device: a profile, an availability decision or a dropout is computed
/// when asked from a stream derived from the seed, so a population of 10^6 devices costs the
/// same few bytes as one of ten, and every answer is the same on every call and every run.
///
/// Streams: `"profile"` (per device: compute speed, then download, then upload bandwidth),
/// `"availability-phase"` (per device: its phase), `"availability"` (per device and cycle: its
/// availability threshold), `"dropout"` (per device and round: whether and when it drops out).
///
/// ## Availability
///
/// `.always`: every device is always available.
///
/// `.diurnal(amplitude a, period P)`: device k is available at time t with probability
///
///     p_k(t) = 1 − a/2 + (a/2)·sin(θ_k(t)),   θ_k(t) = 2πt/P + φ_k,
///
/// which swings between 1 − a (its night) and 1 (its day). The phase φ_k is the device's time
/// zone: uniform over `phaseSpread` of a period, centred on 0. With phases spread over a whole
/// period the population's swings would cancel out; bunched, as real users are in a few time
/// zones, the share of the population available at t is 1 − a/2 + (a/2)·sinc(π·phaseSpread)·
/// sin(2πt/P), where sinc(x) = sin(x)/x (≈ 0.90 for the default spread of a quarter period).
///
/// The decision is deterministic: each cycle of the device's curve (trough to trough) draws one
/// threshold u ~ U(0, 1) from the stream (`"availability"`, round: cycle, device: k), and the
/// device is available exactly when p_k(t) > u. At any one time this happens with probability
/// p_k(t), as the curve asks; over a cycle the device is available for one unbroken stretch
/// around its peak (a phone on its charger overnight) rather than flickering, and a device that
/// draws a small u is available all cycle long.
public struct Population: Sendable {
  public let plan: PopulationPlan
  /// Devices 0..<count.
  public let count: Int
  public let seed: UInt64
  /// The share of a period over which devices' phases are spread (0: all in step; 1: spread
  /// evenly, so the population's availability no longer swings). Only `.diurnal` uses it.
  public let phaseSpread: Double

  public init(plan: PopulationPlan, count: Int, seed: UInt64, phaseSpread: Double = 0.25) {
    precondition(count >= 0, "a population cannot have \(count) devices")
    precondition((0...1).contains(phaseSpread), "phaseSpread is a share of a period, in 0...1")
    self.plan = plan
    self.count = count
    self.seed = seed
    self.phaseSpread = phaseSpread
  }

  /// The scenario's population. `count` is needed when the scenario does not fix the size before
  /// its data is loaded (a natural partition of CSV or LEAF data): pass the number of clients the
  /// data names (`DeviceDataProvider.count`).
  public init(scenario: Scenario, count: Int? = nil) throws(CohortError) {
    guard let size = count ?? scenario.populationSize else {
      throw CohortError(
        .invalidConfiguration,
        "the scenario does not say how many devices there are until its data is loaded",
        fix: "set devices.count, or build the population with the data's client count")
    }
    guard size >= 1 else {
      throw CohortError(.invalidConfiguration, "a population needs at least one device, not \(size)")
    }
    if let fixed = scenario.devices.count, fixed != size {
      throw CohortError(
        .invalidConfiguration, "devices.count is \(fixed) but the population was given \(size) devices",
        fix: "leave devices.count out, or make it match the data")
    }
    self.init(plan: scenario.devices, count: size, seed: scenario.seed)
  }

  /// Mean seconds between a device's own check-ins (`devices.check_in_interval`).
  public var checkInInterval: Double { plan.checkInInterval }

  // MARK: Profiles

  /// Device k's speeds and dropout chance. Recomputed on every call (a few draws), so callers
  /// that need it repeatedly within a round may keep it.
  public func profile(device k: DeviceID) -> DeviceProfile {
    check(k)
    var rng = RandomStream(seed: seed, purpose: "profile", device: k)
    let compute = plan.compute.sample(&rng)
    let download = plan.download.sample(&rng)
    let upload = plan.upload.sample(&rng)
    return DeviceProfile(
      examplesPerSecond: compute, downloadBytesPerSecond: download, uploadBytesPerSecond: upload,
      dropout: plan.dropout)
  }

  /// How long each phase of a round takes device k.
  public func roundTiming(
    device k: DeviceID, examples: Int, epochs: Int, downloadBytes: Int, uploadBytes: Int
  ) -> RoundTiming {
    profile(device: k).roundTiming(
      examples: examples, epochs: epochs, downloadBytes: downloadBytes, uploadBytes: uploadBytes)
  }

  // MARK: Availability

  /// Device k's phase φ_k in radians, within ±π·phaseSpread (0 when availability is `.always`).
  public func availabilityPhase(device k: DeviceID) -> Double {
    check(k)
    guard case .diurnal = plan.availability, phaseSpread > 0 else { return 0 }
    var rng = RandomStream(seed: seed, purpose: "availability-phase", device: k)
    return 2 * Double.pi * phaseSpread * (rng.uniform() - 0.5)
  }

  /// p_k(t): the chance that device k is available at `time`.
  public func availabilityProbability(device k: DeviceID, at time: Double) -> Double {
    switch plan.availability {
    case .always:
      check(k)
      return 1
    case .diurnal(let amplitude, let period):
      let theta = 2 * Double.pi * time / period + availabilityPhase(device: k)
      return 1 - amplitude / 2 + amplitude / 2 * sin(theta)
    }
  }

  /// Whether device k is available at `time` (see the type's documentation for the model).
  public func isAvailable(device k: DeviceID, at time: Double) -> Bool {
    switch plan.availability {
    case .always:
      check(k)
      return true
    case .diurnal(let amplitude, let period):
      precondition(time.isFinite, "availability at a time that is not finite: \(time)")
      guard amplitude > 0 else { return true }
      let theta = 2 * Double.pi * time / period + availabilityPhase(device: k)
      let p = 1 - amplitude / 2 + amplitude / 2 * sin(theta)
      // Cycles run trough to trough (θ ≡ −π/2), so each holds one stretch of availability.
      let cycle = Int(((theta + Double.pi / 2) / (2 * Double.pi)).rounded(.down))
      var rng = RandomStream(seed: seed, purpose: "availability", round: cycle, device: k)
      return rng.uniform() < p
    }
  }

  // MARK: Dropout

  /// Whether device k abandons `round` if selected for it, and when: the fraction in [0, 1) of
  /// its round time (download, training and upload together) after which it goes silent; nil if
  /// it completes the round. Every device has the plan's dropout chance.
  public func dropoutPoint(device k: DeviceID, round: Int) -> Double? {
    check(k)
    guard plan.dropout > 0 else { return nil }
    var rng = RandomStream(seed: seed, purpose: "dropout", round: round, device: k)
    guard rng.uniform() < plan.dropout else { return nil }
    return rng.uniform()
  }

  /// Whether device k abandons `round` if selected for it.
  public func dropsOut(device k: DeviceID, round: Int) -> Bool {
    dropoutPoint(device: k, round: round) != nil
  }

  private func check(_ k: DeviceID) {
    precondition(k >= 0 && k < count, "device \(k) outside the population 0..<\(count)")
  }
}
