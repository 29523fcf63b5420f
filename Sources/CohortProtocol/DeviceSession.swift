/// One device's side of a participation, as a pure state machine: server replies, training
/// results and the time go in; what to send, compute or wait for comes out. The Linux client
/// runtime and the simulator's virtual devices both drive it.
public struct DeviceSession: Sendable {
  public struct Configuration: Sendable, Hashable {
    public var device: DeviceID
    public var population: String
    /// How long to wait for a task after being admitted before checking in again.
    public var taskWait: Double
    /// First back-off after a refusal or lost connection; it doubles each time, up to `maximumBackoff`.
    public var initialBackoff: Double
    public var maximumBackoff: Double

    public init(
      device: DeviceID, population: String, taskWait: Double = 3600, initialBackoff: Double = 10,
      maximumBackoff: Double = 3600
    ) {
      self.device = device
      self.population = population
      self.taskWait = taskWait
      self.initialBackoff = initialBackoff
      self.maximumBackoff = maximumBackoff
    }
  }

  public enum State: Sendable, Hashable {
    /// Not in contact with the server; will check in when woken.
    case idle
    /// Check-in sent, waiting for the server's answer.
    case checkingIn
    /// Admitted to a round's cohort, waiting for its task until the given time.
    case waitingForTask(round: Int, until: Double)
    /// Training for a round.
    case training(RoundTask)
    /// Update sent, waiting for the acknowledgement.
    case reporting(round: Int)
  }

  public enum Action: Sendable, Hashable {
    case send(CheckIn)
    /// Download the checkpoint if needed, train, and call `trained(round:now:)` with the result.
    case train(RoundTask)
    /// Upload the update for this round.
    case upload(round: Int)
    /// Sleep until a time drawn from this window, then call `wake(now:)`. The caller draws the
    /// time from the device's own random stream, so this machine holds no randomness.
    case sleep(window: ClosedRange<Double>)
    /// The participation ended; `accepted` says whether the update counted.
    case finished(round: Int, accepted: Bool)
  }

  public let configuration: Configuration
  public private(set) var state: State = .idle
  /// Consecutive refusals or failures, for exponential back-off.
  public private(set) var failures = 0

  public init(configuration: Configuration) { self.configuration = configuration }

  /// A session restored to a saved state (the simulator saves its devices with each round).
  public init(configuration: Configuration, state: State, failures: Int) {
    self.configuration = configuration
    self.state = state
    self.failures = failures
  }

  /// The device is available (first start, or a sleep ended).
  public mutating func wake(now: Double) -> [Action] {
    switch state {
    case .idle, .waitingForTask:
      state = .checkingIn
      return [.send(CheckIn(device: configuration.device, population: configuration.population))]
    case .checkingIn, .training, .reporting:
      return []
    }
  }

  /// A reply from the server.
  public mutating func received(_ reply: ServerReply, now: Double) -> [Action] {
    switch (state, reply) {
    case (.checkingIn, .retry(let window)):
      failures = 0
      state = .idle
      return [.sleep(window: window)]
    case (.checkingIn, .waitForTask(let round)):
      failures = 0
      state = .waitingForTask(round: round, until: now + configuration.taskWait)
      return []
    case (.checkingIn, .task(let task)), (.waitingForTask, .task(let task)):
      failures = 0
      state = .training(task)
      return [.train(task)]
    case (.reporting(let round), .accepted(let acked)) where acked == round:
      state = .idle
      return [.finished(round: round, accepted: true)]
    case (.reporting(let round), .rejected):
      state = .idle
      return [.finished(round: round, accepted: false)]
    case (_, .rejected):
      return backOff(now: now)
    default:
      // A reply that does not fit the state (a stale or duplicated message) is ignored.
      return []
    }
  }

  /// Local training finished; `succeeded` is false when it failed or the device became ineligible.
  public mutating func trained(round: Int, succeeded: Bool, now: Double) -> [Action] {
    guard case .training(let task) = state, task.round == round else { return [] }
    guard succeeded, now <= task.reportingDeadline else {
      // Too late to count, or nothing to send: give the slot back rather than upload in vain.
      state = .idle
      return [.finished(round: round, accepted: false)] + backOff(now: now)
    }
    state = .reporting(round: round)
    return [.upload(round: round)]
  }

  /// Time passes: gives up waiting for a task that never came.
  public mutating func tick(now: Double) -> [Action] {
    if case .waitingForTask(_, let until) = state, now >= until {
      state = .idle
      return backOff(now: now)
    }
    return []
  }

  /// The connection was lost or the server did not answer.
  public mutating func connectionLost(now: Double) -> [Action] {
    let round: Int? =
      switch state {
      case .training(let task): task.round
      case .reporting(let r): r
      default: nil
      }
    state = .idle
    return (round.map { [Action.finished(round: $0, accepted: false)] } ?? []) + backOff(now: now)
  }

  private mutating func backOff(now: Double) -> [Action] {
    state = .idle
    let delay = min(
      configuration.maximumBackoff, configuration.initialBackoff * Double(1 << min(failures, 30)))
    failures += 1
    // Full jitter: anywhere up to the delay, so devices refused together do not return together.
    return [.sleep(window: now...(now + delay))]
  }
}
