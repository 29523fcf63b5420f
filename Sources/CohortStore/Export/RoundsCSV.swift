public import CohortCore

/// A run's rounds as CSV (RFC 4180 quoting, `\n` line ends), for spreadsheets and pandas.
///
/// The columns are the `rounds` table's, in its order and with its names; a value that is
/// absent (nil) is an empty cell. Numbers are written in Swift's shortest round-trip form.
public enum RoundsCSV {
  public static let columns = [
    "round", "started_at", "ended_at", "outcome", "abandon_reason", "selected", "reported", "dropped", "late",
    "rejected", "bytes_down", "bytes_up", "train_loss", "eval_loss", "eval_accuracy", "federated_eval_loss",
    "federated_eval_accuracy", "federated_eval_examples", "epsilon", "duration_seconds",
    "real_seconds", "mean_staleness", "max_staleness",
  ]

  public static func render(_ rounds: [RoundRecord]) -> String {
    var out = columns.joined(separator: ",") + "\n"
    for r in rounds {
      let cells: [String] = [
        String(r.round), number(r.startedAt), number(r.endedAt), r.outcome.rawValue,
        r.abandonReason.map(quoted) ?? "", String(r.selected), String(r.reported), String(r.dropped),
        String(r.late), String(r.rejected), String(r.bytesDown), String(r.bytesUp), number(r.trainLoss),
        number(r.evalLoss), number(r.evalAccuracy), number(r.federatedEvalLoss),
        number(r.federatedEvalAccuracy), r.federatedEvalExamples.map { String($0) } ?? "", number(r.epsilon),
        number(r.durationSeconds), number(r.realSeconds), number(r.meanStaleness),
        r.maximumStaleness.map { String($0) } ?? "",
      ]
      out += cells.joined(separator: ",") + "\n"
    }
    return out
  }

  private static func number(_ x: Double?) -> String {
    x.map { "\($0)" } ?? ""
  }

  /// A text cell, quoted when it holds a comma, a quote or a line break.
  static func quoted(_ text: String) -> String {
    guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return text }
    return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
  }
}
