public import CohortCore
public import CohortStore

/// One line of a comparison: the runs of one configuration, one run per seed.
public struct ReportSeries: Sendable {
  public var label: String
  /// One run's rounds per seed, in round order or not (they are sorted where order matters).
  public var runs: [[RoundRecord]]
  /// Each run's per-device evaluations, in the order of `runs` (empty lists, or fewer lists than
  /// runs, when devices did not evaluate).
  public var deviceEvaluations: [[DeviceEvaluationRecord]]

  public init(label: String, runs: [[RoundRecord]], deviceEvaluations: [[DeviceEvaluationRecord]] = []) {
    self.label = label
    self.runs = runs
    self.deviceEvaluations = deviceEvaluations
  }

  /// Whether any run of the series has a per-device evaluation.
  var hasDeviceEvaluations: Bool { deviceEvaluations.contains { !$0.isEmpty } }
}

/// The 10th, 50th and 90th percentiles of a set of values, and how many there were.
public struct Percentiles: Sendable, Hashable {
  public var p10: Double
  public var median: Double
  public var p90: Double
  public var count: Int

  public init(p10: Double, median: Double, p90: Double, count: Int) {
    self.p10 = p10
    self.median = median
    self.p90 = p90
    self.count = count
  }

  /// The percentiles of `values` (non-finite ones left out), nil when none is left.
  public init?(_ values: [Double]) {
    let sorted = values.filter(\.isFinite).sorted()
    guard let p10 = Self.percentile(sorted, 0.1), let median = Self.percentile(sorted, 0.5),
      let p90 = Self.percentile(sorted, 0.9)
    else { return nil }
    self.init(p10: p10, median: median, p90: p90, count: sorted.count)
  }

  /// The `p`-quantile (0 ≤ p ≤ 1) of ascending `sorted` values, interpolating linearly between
  /// the two values around rank (n − 1)·p: NumPy's default ("linear", Hyndman–Fan type 7), so
  /// figures can be checked against `numpy.percentile`. Nil for no values.
  public static func percentile(_ sorted: [Double], _ p: Double) -> Double? {
    guard let first = sorted.first else { return nil }
    guard sorted.count > 1 else { return first }
    let rank = Double(sorted.count - 1) * min(1, max(0, p))
    let below = Int(rank.rounded(.down))
    guard below + 1 < sorted.count else { return sorted[sorted.count - 1] }
    let fraction = rank - Double(below)
    return sorted[below] + (sorted[below + 1] - sorted[below]) * fraction
  }

  /// "0.412 / 0.620 / 0.801": p10 / median / p90.
  public var text: String {
    [p10, median, p90].map { NumberText.fixed($0, 3) }.joined(separator: " / ")
  }
}

/// A series' numbers, as the report's summary table and `cohort report` print them.
///
/// Every figure is computed per seed first and then combined over seeds, so a seed with more
/// evaluated rounds does not weigh more than another.
public struct SummaryRow: Sendable, Hashable {
  public var label: String
  /// Runs in the series.
  public var seeds: Int
  /// Runs with at least one evaluated round; the accuracy figures are over these.
  public var evaluatedSeeds: Int
  /// Mean over seeds of each run's last evaluated central-test accuracy.
  public var finalAccuracyMean: Double?
  /// Sample standard deviation (n − 1) of the same; nil with fewer than two evaluated seeds.
  public var finalAccuracyStd: Double?
  /// Mean over seeds of each run's highest central-test accuracy.
  public var bestAccuracy: Double?
  /// The accuracy target, when one was given.
  public var target: Double?
  /// Mean over the seeds that reached the target of the first round whose accuracy was at least
  /// the target; nil when no seed reached it (or there is no target).
  public var roundsToTarget: Double?
  /// Seeds that reached the target.
  public var seedsReachingTarget: Int
  /// Mean over the same seeds of the end time of that round: simulated seconds in a simulation,
  /// the server's clock otherwise.
  public var timeToTarget: Double?
  /// Bytes uploaded per reporting device: `bytesUp / reported` for every round with a report,
  /// averaged over a run's rounds, then over seeds.
  public var bytesUpPerDevice: Double?
  /// Per-device accuracy at each seed's last round with per-device evaluations, the devices of
  /// all seeds pooled; nil when the series' devices did not evaluate.
  public var finalDeviceAccuracy: Percentiles?

  public init(
    label: String, seeds: Int, evaluatedSeeds: Int, finalAccuracyMean: Double?, finalAccuracyStd: Double?,
    bestAccuracy: Double?, target: Double?, roundsToTarget: Double?, seedsReachingTarget: Int,
    timeToTarget: Double?, bytesUpPerDevice: Double?
  ) {
    self.label = label
    self.seeds = seeds
    self.evaluatedSeeds = evaluatedSeeds
    self.finalAccuracyMean = finalAccuracyMean
    self.finalAccuracyStd = finalAccuracyStd
    self.bestAccuracy = bestAccuracy
    self.target = target
    self.roundsToTarget = roundsToTarget
    self.seedsReachingTarget = seedsReachingTarget
    self.timeToTarget = timeToTarget
    self.bytesUpPerDevice = bytesUpPerDevice
  }

  /// The column headings of `cells`.
  public static let columns = [
    "series", "seeds", "final acc (mean ± std)", "best acc", "rounds to target", "time to target",
    "bytes up / device",
  ]

  /// The column of `finalDeviceAccuracy`, shown only when some series has it.
  public static let deviceAccuracyColumn = "final device acc p10 / p50 / p90"

  /// The column headings of `cells(deviceAccuracy:)` for `rows`: `columns`, and the per-device
  /// accuracy column when any row has per-device evaluations.
  public static func columns(for rows: [SummaryRow]) -> [String] {
    columns + (rows.contains { $0.finalDeviceAccuracy != nil } ? [deviceAccuracyColumn] : [])
  }

  /// The row's cells for the headings `columns(for:)` gave.
  public func cells(in headings: [String]) -> [String] {
    cells + (headings.contains(Self.deviceAccuracyColumn) ? [finalDeviceAccuracy?.text ?? "-"] : [])
  }

  /// The row as text, the same in the HTML table and on the terminal.
  public var cells: [String] {
    let final: String
    if let mean = finalAccuracyMean {
      final = NumberText.fixed(mean, 4) + (finalAccuracyStd.map { " ± " + NumberText.fixed($0, 4) } ?? "")
    } else {
      final = "-"
    }
    return [
      label, "\(seeds)", final, bestAccuracy.map { NumberText.fixed($0, 4) } ?? "-", roundsToTargetText,
      timeToTarget.map(NumberText.duration) ?? "-", bytesUpPerDevice.map(NumberText.bytes) ?? "-",
    ]
  }

  /// "12.3", "14.0 (2/3 seeds)", "not reached", or "-" without a target.
  public var roundsToTargetText: String {
    guard target != nil else { return "-" }
    guard let rounds = roundsToTarget else { return "not reached" }
    let text = NumberText.fixed(rounds, 1)
    return seedsReachingTarget < seeds ? "\(text) (\(seedsReachingTarget)/\(seeds) seeds)" : text
  }
}

/// The statistics behind a summary row.
enum Statistics {
  static func mean(_ xs: [Double]) -> Double? {
    xs.isEmpty ? nil : xs.reduce(0, +) / Double(xs.count)
  }

  /// Sample standard deviation (n − 1 in the denominator), nil below two values.
  static func sampleStandardDeviation(_ xs: [Double]) -> Double? {
    guard xs.count >= 2, let m = mean(xs) else { return nil }
    let squares = xs.reduce(0) { $0 + ($1 - m) * ($1 - m) }
    return (squares / Double(xs.count - 1)).squareRoot()
  }

  /// A run's evaluated rounds, in round order; `endedAt` counts from the run's start (a server's
  /// rounds carry Unix time, a simulation's start at 0).
  static func evaluated(_ run: [RoundRecord]) -> [(round: Int, accuracy: Double, endedAt: Double)] {
    let origin = run.map(\.startedAt).min() ?? 0
    return run.sorted { $0.round < $1.round }.compactMap { r in
      r.evalAccuracy.map { (r.round, $0, r.endedAt - origin) }
    }
  }

  static func summary(_ series: ReportSeries, target: Double?) -> SummaryRow {
    let evaluatedRuns = series.runs.map(evaluated).filter { !$0.isEmpty }
    let finals = evaluatedRuns.compactMap { $0.last?.accuracy }
    let bests = evaluatedRuns.compactMap { $0.map(\.accuracy).max() }
    var reached: [(round: Int, accuracy: Double, endedAt: Double)] = []
    if let target {
      reached = evaluatedRuns.compactMap { run in run.first { $0.accuracy >= target } }
    }
    let perDevice = series.runs.compactMap { run in
      mean(run.filter { $0.reported > 0 }.map { Double($0.bytesUp) / Double($0.reported) })
    }
    var row = SummaryRow(
      label: series.label, seeds: series.runs.count, evaluatedSeeds: evaluatedRuns.count,
      finalAccuracyMean: mean(finals), finalAccuracyStd: sampleStandardDeviation(finals),
      bestAccuracy: mean(bests), target: target, roundsToTarget: mean(reached.map { Double($0.round) }),
      seedsReachingTarget: reached.count, timeToTarget: mean(reached.map(\.endedAt)),
      bytesUpPerDevice: mean(perDevice))
    row.finalDeviceAccuracy = finalDeviceAccuracy(series)
    return row
  }

  /// Per-device accuracy at each seed's last round with per-device evaluations, all seeds'
  /// devices pooled.
  static func finalDeviceAccuracy(_ series: ReportSeries) -> Percentiles? {
    let pooled = series.deviceEvaluations.flatMap { run -> [Double] in
      guard let last = run.map(\.round).max() else { return [] }
      return run.filter { $0.round == last }.map(\.accuracy)
    }
    return Percentiles(pooled)
  }

  /// Per-device accuracy percentiles at every round where some seed's devices evaluated, the
  /// devices of all seeds pooled, in round order.
  static func deviceAccuracyByRound(_ series: ReportSeries) -> [(round: Int, percentiles: Percentiles)] {
    var byRound: [Int: [Double]] = [:]
    for run in series.deviceEvaluations {
      for e in run { byRound[e.round, default: []].append(e.accuracy) }
    }
    return byRound.keys.sorted().compactMap { round in
      Percentiles(byRound[round]!).map { (round, $0) }
    }
  }

  /// Rounds to target of each seed that reached it, for the bar chart's whiskers.
  static func roundsToTarget(_ series: ReportSeries, target: Double) -> [Int] {
    series.runs.compactMap { run in evaluated(run).first { $0.accuracy >= target }?.round }
  }
}
