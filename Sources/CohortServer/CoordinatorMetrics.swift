import CohortCore
import CohortProtocol
import Metrics

/// The coordinator's metrics, each registered once so a count costs an increment.
struct CoordinatorMetrics: Sendable {
  let checkIns: Counter
  let reportsAccepted: Counter
  let roundsCommitted: Counter
  let roundsAbandoned: Counter
  let commitFailures: Counter
  let roundDuration: Metrics.Timer
  let reportsRejected: [Rejection: Counter]
  /// Where the run stands: its last committed round, that model's central test accuracy and
  /// loss (only with a central evaluator), and ε after it (only with differential privacy): a
  /// gauge that could only ever read 0 would be misread.
  let lastRound: Gauge
  let lastAccuracy: Gauge?
  let lastLoss: Gauge?
  let epsilon: Gauge?
  /// `server.mode: async`: devices training now, and the staleness of each folded update.
  let training: Gauge?
  let staleness: Recorder?

  init(
    factory: any MetricsFactory, evaluated: Bool = false, isPrivate: Bool = false, asynchronous: Bool = false
  ) {
    training = asynchronous ? Gauge(label: "cohort_devices_training", factory: factory) : nil
    staleness = asynchronous ? Recorder(label: "cohort_update_staleness", factory: factory) : nil
    checkIns = Counter(label: "cohort_check_ins_total", factory: factory)
    reportsAccepted = Counter(label: "cohort_reports_accepted_total", factory: factory)
    roundsCommitted = Counter(label: "cohort_rounds_committed_total", factory: factory)
    roundsAbandoned = Counter(label: "cohort_rounds_abandoned_total", factory: factory)
    commitFailures = Counter(label: "cohort_commit_failures_total", factory: factory)
    roundDuration = Metrics.Timer(label: "cohort_round_duration_seconds", factory: factory)
    lastRound = Gauge(label: "cohort_last_committed_round", factory: factory)
    lastAccuracy = evaluated ? Gauge(label: "cohort_last_committed_accuracy", factory: factory) : nil
    lastLoss = evaluated ? Gauge(label: "cohort_last_committed_loss", factory: factory) : nil
    epsilon = isPrivate ? Gauge(label: "cohort_privacy_epsilon", factory: factory) : nil
    reportsRejected = Dictionary(
      uniqueKeysWithValues: Rejection.allCases.map {
        (
          $0,
          Counter(
            label: "cohort_reports_rejected_total", dimensions: [("reason", $0.rawValue)], factory: factory)
        )
      })
  }

  func count(_ reply: ServerReply) {
    switch reply {
    case .accepted: reportsAccepted.increment()
    case .rejected(let reason): reportsRejected[reason]?.increment()
    default: break
    }
  }

  func written(_ record: RoundRecord) {
    if record.outcome == .committed {
      roundsCommitted.increment()
      roundDuration.recordSeconds(record.endedAt - record.startedAt)
      lastRound.record(record.round)
      if let accuracy = record.evalAccuracy { lastAccuracy?.record(accuracy) }
      if let loss = record.evalLoss { lastLoss?.record(loss) }
      if let e = record.epsilon { epsilon?.record(e) }
    } else {
      roundsAbandoned.increment()
    }
  }
}
