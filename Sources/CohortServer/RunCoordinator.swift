public import CohortCore
public import CohortProtocol

/// What the server loop (`ServedRun`) and the transport need of a run's coordinator:
/// `Coordinator` for synchronous rounds, `AsyncCoordinator` for `server.mode: async`.
public protocol RunCoordinator: Sendable {
  /// Opens the run (the first selection, or nothing to open in async mode).
  func start() async
  func checkIn(_ checkIn: CheckIn) async -> ServerReply
  func report(_ report: UpdateReport) async -> ServerReply
  /// A device of `round` (or, in async mode, training on that version) left before it reported.
  func dropped(device: DeviceID, round: Int) async
  /// Time passed: whatever is due is carried out.
  func tick() async
  /// The server is stopping.
  func shutdown() async
  /// Calls `observer` with every round (version) record as it is written.
  func observeRounds(_ observer: @escaping @Sendable (RoundRecord) -> Void) async
  /// Calls `observer` whenever the next deadline changes, so a loop sleeps until it and no longer.
  func observeDeadlines(_ observer: @escaping @Sendable () -> Void) async
  var status: Coordinator.Status { get async }
  var isFinished: Bool { get async }
  var nextDeadline: Double? { get async }
  /// Why the coordinator stopped working; nil while it works.
  var failure: CohortError? { get async }
  /// The round (version) of the current global model.
  var globalRound: Int { get async }
  var committedRounds: Int { get async }
  /// The current global model.
  var global: Weights { get async }
}

extension Coordinator: RunCoordinator {}
