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

  init(factory: any MetricsFactory) {
    checkIns = Counter(label: "cohort_check_ins_total", factory: factory)
    reportsAccepted = Counter(label: "cohort_reports_accepted_total", factory: factory)
    roundsCommitted = Counter(label: "cohort_rounds_committed_total", factory: factory)
    roundsAbandoned = Counter(label: "cohort_rounds_abandoned_total", factory: factory)
    commitFailures = Counter(label: "cohort_commit_failures_total", factory: factory)
    roundDuration = Metrics.Timer(label: "cohort_round_duration_seconds", factory: factory)
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
    } else {
      roundsAbandoned.increment()
    }
  }
}
