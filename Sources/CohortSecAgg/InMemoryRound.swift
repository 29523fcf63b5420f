import Dispatch

/// The server side an in-memory round drives: `SecAggServer` itself, or a server-side round that
/// wraps it (and keeps its own books of who answered).
public protocol InMemorySecAggServer {
  /// The step in progress; nil once the round finished or was abandoned.
  var stepInProgress: SecAggServer.Step? { get }
  /// Hands the server one device's message.
  mutating func deliver(_ message: SecAggMessage, from sender: SecAggIndex)
  /// Closes the current step; the messages for the devices that go on.
  mutating func closeCurrentStep() -> [SecAggIndex: SecAggMessage]
}

extension SecAggServer: InMemorySecAggServer {
  public var stepInProgress: Step? { step }
  public mutating func deliver(_ message: SecAggMessage, from sender: SecAggIndex) {
    receive(message, from: sender)
  }
  public mutating func closeCurrentStep() -> [SecAggIndex: SecAggMessage] { closeStep() }
}

/// Runs one secure-aggregation round between a server and `count` devices held in memory,
/// delivering every message and closing each step when all remaining devices have answered.
/// The simulator and `cohort bench secagg` drive rounds through this; the network service uses
/// the same two state machines with real links instead.
public struct InMemorySecAggRound: Sendable {
  /// Which side's work a timing hook is measuring.
  public enum Party: Sendable {
    case device(SecAggIndex)
    case server
  }

  /// What the round produced.
  public struct Outcome: Sendable {
    /// The survivors' summed inputs in Z/2^b; nil when the round was abandoned.
    public var sum: [UInt32]?
    public var survivors: [SecAggIndex]
    public var abandonedReason: String?
    public var records: [SecAggServer.Step: SecAggServer.StepRecord]
    public var rejections: [SecAggServer.Rejection: Int]
    /// Bytes each device sent over the whole protocol.
    public var deviceBytesSent: [SecAggIndex: Int]
    /// Bytes the server sent to each device over the whole protocol.
    public var deviceBytesReceived: [SecAggIndex: Int]
  }

  public let configuration: SecAggConfiguration
  /// Devices handled at once within a step. The server still receives their messages one at a
  /// time in index order, so the outcome is the same for any value; above 1, `input` and `timed`
  /// are called from several threads at once.
  public var parallelism: Int

  public init(configuration: SecAggConfiguration, parallelism: Int = 1) {
    self.configuration = configuration
    self.parallelism = max(1, parallelism)
  }

  /// - Parameters:
  ///   - seed: each device's 32-byte root secret.
  ///   - identitySecretKey: each device's Ed25519 secret key (active variant).
  ///   - input: each device's encoded input, asked for only when the device masks it.
  ///   - dropsBefore: whether a device drops out instead of answering the given step.
  ///   - timed: wraps every piece of device and server work, so a caller can measure it.
  public func run(
    seed: (SecAggIndex) -> [UInt8],
    identitySecretKey: (SecAggIndex) -> [UInt8] = { _ in [] },
    input: (SecAggIndex) -> [UInt32],
    dropsBefore: (SecAggServer.Step, SecAggIndex) -> Bool = { _, _ in false },
    timed: (Party, SecAggServer.Step, () -> Void) -> Void = { _, _, work in work() }
  ) -> Outcome {
    var server = SecAggServer(configuration: configuration)
    let traffic = drive(
      &server, seed: seed, identitySecretKey: identitySecretKey, input: input, dropsBefore: dropsBefore,
      timed: timed)
    var reason: String? = nil
    var survivors: [SecAggIndex] = []
    switch server.state {
    case .abandoned(let why): reason = why
    case .finished(let s): survivors = s
    case .running: break
    }
    return Outcome(
      sum: server.sum, survivors: survivors, abandonedReason: reason, records: server.records,
      rejections: server.rejections, deviceBytesSent: traffic.sent, deviceBytesReceived: traffic.received)
  }

  /// Runs the round's devices against `server` (which starts at `advertiseKeys` with this
  /// round's configuration) until it finishes or is abandoned; the parameters are `run`'s.
  /// Returns the bytes each device sent and received.
  public func drive<Server: InMemorySecAggServer>(
    _ server: inout Server,
    seed: (SecAggIndex) -> [UInt8],
    identitySecretKey: (SecAggIndex) -> [UInt8] = { _ in [] },
    input: (SecAggIndex) -> [UInt32],
    dropsBefore: (SecAggServer.Step, SecAggIndex) -> Bool = { _, _ in false },
    timed: (Party, SecAggServer.Step, () -> Void) -> Void = { _, _, work in work() }
  ) -> (sent: [SecAggIndex: Int], received: [SecAggIndex: Int]) {
    var devices: [SecAggIndex: SecAggDevice] = [:]
    var sent: [SecAggIndex: Int] = [:]
    var received: [SecAggIndex: Int] = [:]
    let all = (1...configuration.count).map { SecAggIndex($0) }
    for index in all where !dropsBefore(.advertiseKeys, index) {
      var device = SecAggDevice(
        configuration: configuration, index: index, seed: seed(index),
        identitySecretKey: identitySecretKey(index))
      var keys: AdvertiseKeys? = nil
      timed(.device(index), .advertiseKeys) { keys = try? device.advertiseKeys() }
      if let keys {
        let message = SecAggMessage.advertiseKeys(keys)
        sent[index, default: 0] += message.byteCount
        timed(.server, .advertiseKeys) { server.deliver(message, from: index) }
      }
      devices[index] = device
    }
    while let step = server.stepInProgress {
      var outgoing: [SecAggIndex: SecAggMessage] = [:]
      timed(.server, step) { outgoing = server.closeCurrentStep() }
      guard let next = server.stepInProgress else { break }
      var active: [SecAggIndex] = []
      for index in outgoing.keys.sorted() {
        received[index, default: 0] += outgoing[index]!.byteCount
        if dropsBefore(next, index) || devices[index] == nil {
          devices[index] = nil
        } else {
          active.append(index)
        }
      }
      // Devices work in batches: a batch's replies (masked inputs are as large as the model)
      // are handed to the server before the next batch starts, so memory stays bounded.
      let batchSize = parallelism > 1 ? 8 * parallelism : 1
      for batchStart in stride(from: 0, to: active.count, by: batchSize) {
        let indices = Array(active[batchStart..<min(batchStart + batchSize, active.count)])
        // Moved out, not copied: each device's secrets then have one owner, so wiping them
        // zeroes the only copy instead of a copy-on-write duplicate.
        var states = indices.map { devices.removeValue(forKey: $0)! }
        var replies = [SecAggMessage?](repeating: nil, count: indices.count)
        let workers = min(parallelism, indices.count)
        withoutActuallyEscaping(input) { input in
          withoutActuallyEscaping(timed) { timed in
            states.withUnsafeMutableBufferPointer { d in
              replies.withUnsafeMutableBufferPointer { r in
                let devicesBuffer = d
                let repliesBuffer = r
                // Each call touches only slot i of the two buffers, and slot i belongs to one worker.
                let job = UncheckedSendable { (i: Int) in
                  let index = indices[i]
                  let words = next == .maskedInput ? input(index) : []
                  var answer: SecAggMessage? = nil
                  timed(.device(index), next) {
                    answer = try? devicesBuffer[i].handle(outgoing[index]!, input: words)
                  }
                  repliesBuffer[i] = answer
                }
                if workers > 1 {
                  let count = indices.count
                  DispatchQueue.concurrentPerform(iterations: workers) { worker in
                    for i in stride(from: worker, to: count, by: workers) { job.value(i) }
                  }
                } else {
                  for i in 0..<indices.count { job.value(i) }
                }
              }
            }
          }
        }
        for (i, index) in indices.enumerated() {
          devices[index] = states[i]
          guard let reply = replies[i] else { continue }
          sent[index, default: 0] += reply.byteCount
          timed(.server, next) { server.deliver(reply, from: index) }
        }
      }
    }
    return (sent, received)
  }
}

/// Carries a closure that is safe to share only because its callers partition its work.
private struct UncheckedSendable<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}
