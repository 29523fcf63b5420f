public import CohortCore
public import CohortProtocol
import CohortSecAgg
import Foundation
public import Logging

/// Secure aggregation over device streams: the same `SecAggServer` state machine as the
/// simulator's, fed by the devices that reported, each over its own participation stream.
/// A step closes when every remaining device has answered or its time is up; a device that
/// disconnects or stays silent is a dropout, and the protocol copes with it as designed.
///
/// In the active variant every member's signing key comes from the certificate it presented at
/// check-in (checked by the service); `SecAggBegin` hands every member the others' certificates,
/// so each device checks the keys itself instead of trusting this server.
public actor NetworkSecureAggregation: SecureAggregationDriver {
  struct Member {
    var examples: Int
    var mailbox: DeviceMailbox
    /// The device's verified certificate (active variant).
    var certificate: VerifiedDeviceCertificate?
  }

  let plan: Plan
  let dimension: Int
  /// The run seed the rounds' rotation signs come from.
  let runSeed: UInt64
  /// How long the server waits for a step's answers.
  let stepTimeout: Double
  let logger: Logger
  /// Devices whose report was accepted, by round, with their stream's mailbox.
  private var enrolled: [Int: [DeviceID: Member]] = [:]
  /// The round being aggregated.
  private var running: SecureAggregationRound?
  private var stepWaiter: CheckedContinuation<Void, Never>?
  private var stepNumber = 0

  public init(plan: Plan, dimension: Int, runSeed: UInt64, stepTimeout: Double, logger: Logger) {
    self.runSeed = runSeed
    self.plan = plan
    self.dimension = dimension
    self.stepTimeout = stepTimeout
    self.logger = logger
  }

  var isActive: Bool { plan.secureAggregation.variant == .active }

  public func decode(ringSum: [UInt32], devices: Int, round: Int) -> (
    weightedSum: [Double], totalWeight: Double
  )? {
    let seed = SecureAggregationEncoding.rotationSeed(runSeed: runSeed, round: round, plan: plan)
    guard
      case .success(let encoding) = SecureAggregationEncoding.make(
        plan: plan, round: round, dimension: dimension, rotationSeed: seed),
      ringSum.count == encoding.vectorLength
    else { return nil }
    return encoding.decodeSum(ringSum, devices: devices)
  }

  func enrol(
    round: Int, device: DeviceID, examples: Int, mailbox: DeviceMailbox,
    certificate: VerifiedDeviceCertificate? = nil
  ) {
    // Anything older belongs to rounds that closed without the protocol.
    for r in enrolled.keys where r < round { enrolled[r] = nil }
    enrolled[round, default: [:]][device] = Member(
      examples: examples, mailbox: mailbox, certificate: certificate)
  }

  /// The device's stream ended or its report was refused.
  func leave(round: Int, device: DeviceID) {
    enrolled[round]?[device] = nil
    if running?.round == round { wakeIfDone() }
  }

  /// A device's answer to the current step.
  func receive(round: Int, device: DeviceID, bytes: [UInt8]) {
    guard running?.round == round, let rejection = running!.receive(device: device, bytes: bytes) else {
      wakeIfDone()
      return
    }
    logger.debug(
      "secure-aggregation message refused",
      metadata: ["device": "\(device)", "round": "\(round)", "reason": "\(rejection.rawValue)"])
    // A refused member is out of the protocol, as a dropout: it is told at once, and the step
    // need not wait for it until its time is up.
    if case .refused(let reason) = running!.outcome(of: device) {
      enrolled[round]?[device]?.mailbox.post(.secAggFinished(accepted: false, reason: reason))
    }
    enrolled[round]?[device] = nil
    wakeIfDone()
  }

  /// Closes the step early once nobody it waits for can still answer.
  private func wakeIfDone() {
    if stepDone { wakeStep() }
  }

  private var stepDone: Bool {
    guard let running else { return true }
    return running.awaiting.allSatisfy { enrolled[running.round]?[$0] == nil }
  }

  private func wakeStep() {
    stepWaiter?.resume()
    stepWaiter = nil
  }

  /// Waits until the step's answers are in, or its time is up.
  private func waitForStep() async {
    if stepDone { return }
    stepNumber += 1
    let step = stepNumber
    let timeout = stepTimeout
    let timer = Task { [weak self] in
      try? await Task.sleep(for: .seconds(timeout))
      await self?.stepTimedOut(step)
    }
    await withCheckedContinuation { stepWaiter = $0 }
    timer.cancel()
  }

  private func stepTimedOut(_ step: Int) {
    if step == stepNumber { wakeStep() }
  }

  public func secureSum(round: Int, devices: [DeviceID]) async -> SecureSum {
    // In the active variant a member needs a verified certificate (the service refuses a report
    // without one, so this only guards the invariant).
    let members = devices.compactMap { device -> SecureAggregationRound.Member? in
      guard let m = enrolled[round]?[device], !isActive || m.certificate != nil else { return nil }
      return SecureAggregationRound.Member(
        device: device, examples: m.examples, identityKey: m.certificate?.signingPublicKey,
        certificate: m.certificate?.der ?? [])
    }
    // The rotation is public randomness: drawn from the run seed, as the simulator does, so a run
    // replays the simulation of the same seed. Graph seeds and masks stay cryptographic.
    running = SecureAggregationRound(
      plan: plan, round: round, dimension: dimension,
      rotationSeed: SecureAggregationEncoding.rotationSeed(runSeed: runSeed, round: round, plan: plan),
      graphSeed: SecAggCrypto.randomSeed(), members: members)
    for m in members {
      guard let begin = running!.begin(for: m.device) else { break }
      enrolled[round]?[m.device]?.mailbox.post(.secAggBegin(begin))
    }
    let clock = ContinuousClock()
    while case .running(let step) = running!.state {
      await waitForStep()
      var outgoing: [DeviceID: [UInt8]] = [:]
      let elapsed = clock.measure { outgoing = running!.closeStep() }
      running!.addServerSeconds(
        Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18, step: step)
      for (device, bytes) in outgoing { enrolled[round]?[device]?.mailbox.post(.secAggRequest(bytes)) }
    }
    let outcome = running!
    running = nil
    // Every enrolled device of the round learns whether its input is in the sum.
    for (device, member) in enrolled[round] ?? [:] {
      switch outcome.outcome(of: device) ?? .refused(reason: "secure_aggregation_failed") {
      case .accepted: member.mailbox.post(.secAggFinished(accepted: true, reason: ""))
      case .refused(let reason): member.mailbox.post(.secAggFinished(accepted: false, reason: reason))
      }
    }
    enrolled[round] = nil
    return outcome.result!
  }
}
