public import CohortCore
import CohortProtocol
public import Foundation

extension Coordinator {
  public var status: Status {
    Status(
      isFinished: pipeline.isFinished, globalRound: globalRound, hasPendingCommit: pending != nil,
      nextDeadline: pipeline.nextDeadline, failure: failure)
  }

  public var isFinished: Bool { pipeline.isFinished }
  /// When the next window closes, for the caller's timer or event queue.
  public var nextDeadline: Double? { pipeline.nextDeadline }
  public var hasPendingCommit: Bool { pending != nil }
  /// Rounds committed so far in this run (a resumed run counts those before the resume).
  public var committedRounds: Int { pipeline.committedRounds }
  /// The clip C devices use this round (DP; adaptive clipping moves it after each commit).
  public var clipNorm: Double { pipeline.clipNorm }

  // MARK: Commit

  /// Hands the closed round to the caller to write, and moves on to the next round at once. The
  /// simulator writes rounds in the background, in order, while the next cohort trains.
  public func takePending() async -> ClosedRound? {
    guard var closed = pending else { return nil }
    closed.lateReports = pipeline.takeLateReports()
    pending = nil
    // Counted only once written (or handed over to be): metrics never show a round the store lacks.
    metrics.written(closed.record)
    for observer in roundObservers { observer(closed.record) }
    if closed.record.outcome == .committed {
      await perform(pipeline.committed(round: closed.record.round, now: clock.now))
    }
    return closed
  }

  /// The state to store with the pending round, so a resumed run continues exactly from here.
  public func snapshot() -> Snapshot {
    Snapshot(
      pipeline: pipeline, pendingRound: pending?.record.outcome == .committed ? pending?.record.round : nil,
      strategyState: strategyState)
  }

  /// Writes the pending round with `resumeState` and moves on (for a driver that stores its own
  /// state with each round and writes synchronously).
  public func commitPending(resumeState: Data?) async throws(CohortError) {
    guard let p = pending else { return }
    if let store, let run = configuration.run {
      try await store.commitRound(
        run, p.record, checkpoint: p.model, devices: p.participants, lateReports: pipeline.lateReportsPending,
        resumeState: resumeState, secureAggregation: p.secureAggregation)
    }
    _ = await takePending()
  }

  /// Writes the pending round; a committed round that fails to write is retried on the
  /// pipeline's schedule (devices are told to come back meanwhile), an abandoned one is logged.
  func commitPending() async {
    guard let p = pending else { return }
    do throws(CohortError) {
      try await commitPending(resumeState: nil)
      commitError = nil
    } catch {
      metrics.commitFailures.increment()
      if error.code == .fenced {
        // Another server leads the run now: no retry can land, and its devices must move to it.
        failure = error
        logger.critical("stopping: \(error.message)")
        await perform([])
        return
      }
      commitError = error
      logger.error(
        "could not commit round", metadata: ["round": "\(p.record.round)", "error": "\(error.message)"])
      guard p.record.outcome == .committed else {
        // Nothing to retry for: the round has no model, and its record is the only loss.
        pending = nil
        return
      }
      await perform(pipeline.commitFailed(round: p.record.round, now: clock.now))
    }
  }

  /// Keeps a closed round until it is written (at once on a server, when the simulator asks).
  func hold(_ closed: ClosedRound) async {
    var closed = closed
    closed.record.realSeconds = realStarts.removeValue(forKey: closed.record.round).map {
      (ContinuousClock.now - $0) / .seconds(1)
    }
    pending = closed
    if configuration.autoCommit { await commitPending() }
  }
}

extension CohortError {
  /// The coordinator's failure once a round could not be committed in `attempts` tries.
  static func commitAbandoned(round: Int, attempts: Int, cause: CohortError?) -> CohortError {
    CohortError(
      .storage,
      "round \(round) could not be committed after \(attempts) attempts: "
        + (cause?.message ?? "the results store refused the write"),
      fix: "free disk space or repair the database, make sure no other process writes to it, then start "
        + "the same command again to resume after the last committed round")
  }
}
