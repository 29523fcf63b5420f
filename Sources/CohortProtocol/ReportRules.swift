public import CohortCore

/// What the server accepts in a report, from the plan: every figure a device sends is checked
/// against it before it is counted, so no report can overflow a sum, carry a loss or accuracy
/// that is not one, or (with `server.reports.max_update_norm`) outweigh the cohort.
public struct ReportRules: Sendable, Hashable {
  /// The model's layout, which a plain update must match.
  public var layout: WeightsLayout
  /// Under secure aggregation a report carries no update (it travels masked).
  public var secure: Bool
  /// The most examples a device may report in a round (training or evaluation).
  public var maximumExamples: Int
  public var maximumUpdateNorm: Double?
  public var clipOverNorm: Bool

  /// - Parameter secure: whether updates travel inside secure aggregation (by default as the
  ///   plan says; a server running the protocol knows).
  public init(plan: Plan, layout: WeightsLayout, secure: Bool? = nil) {
    self.layout = layout
    self.secure = secure ?? plan.secureAggregation.enabled
    maximumExamples = plan.server.reports?.examplesCap ?? ReportsPlan.defaultMaximumExamples
    maximumUpdateNorm = plan.server.reports?.maximumUpdateNorm
    clipOverNorm = plan.server.reports?.overNorm == .clip
  }

  /// The losses a report may carry: not negative, and no larger than Float32 training can give.
  /// A finite loss near Double's limit would make the round's example-weighted sums infinite.
  public static let lossRange = 0...Double(Float.greatestFiniteMagnitude)

  /// The report as the server counts it (its update clipped when the plan clips), or why not.
  /// `report` must have its encoded update decoded (`UpdateReport.decoded(by:layout:)`).
  public func admit(_ report: UpdateReport) -> Result<UpdateReport, Rejection> {
    let wellFormed = secure ? report.isWellFormedWithoutUpdate : report.isWellFormed(for: layout)
    guard wellFormed else { return .failure(.malformed) }
    let losses = Self.lossRange
    guard report.examples <= maximumExamples, losses.contains(report.trainLoss),
      losses.contains(report.lossAtGlobal ?? 0)
    else {
      return .failure(.outOfRange)
    }
    if let e = report.evaluation {
      guard (0...maximumExamples).contains(e.examples), losses.contains(e.loss), (0...1).contains(e.accuracy)
      else { return .failure(.outOfRange) }
    }
    guard let bound = maximumUpdateNorm, !secure else { return .success(report) }
    // The norm in Float64: Float32 squares of finite values near 3e38 would overflow.
    var squares = 0.0
    for v in report.update.values { squares += Double(v) * Double(v) }
    let norm = squares.squareRoot()
    guard norm > bound else { return .success(report) }
    guard clipOverNorm, norm.isFinite else { return .failure(.outOfRange) }
    var clipped = report
    let scale = Float(bound / norm)
    for i in clipped.update.values.indices { clipped.update.values[i] *= scale }
    return .success(clipped)
  }
}

extension Result where Failure == Rejection {
  /// The admitted report, or `fallback` with the refusal put in `refusal`.
  public func get(else fallback: Success, _ refusal: inout Rejection?) -> Success {
    switch self {
    case .success(let value): return value
    case .failure(let rejection):
      refusal = rejection
      return fallback
    }
  }
}
