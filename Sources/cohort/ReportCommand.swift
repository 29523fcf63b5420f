import ArgumentParser
import CohortCore
import CohortReport
import CohortStore
import Foundation

struct ReportCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "report",
    abstract: "Compare stored runs in a self-contained HTML report with SVG charts.",
    discussion: """
      Runs are grouped into series, one per configuration: runs of `cohort compare` by their \
      scenario and variant; other runs by name, a run named `NAME seed N` belonging to the series \
      NAME with every other given run of that name and any seed (e.g. `fedadam seed 1` and \
      `fedadam seed 3` make one series with two seeds). Runs of different scenarios (or plans) \
      are never one series, whatever their names. A run whose name has no seed suffix is a series \
      of its own. Run ids take ranges: `3-8`, `1,3-5`. Charts show each series' mean over seeds \
      with a band from the \
      minimum to the maximum; the table gives final accuracy (mean ± std over seeds), best \
      accuracy, rounds and simulated time to --target, and bytes uploaded per reporting device. \
      The report fetches nothing and runs no scripts: open it anywhere, attach it, commit it. \
      With --svg-dir every chart is also written as its own SVG file, for a paper.
      """)

  @OptionGroup var db: DatabaseOption
  @Argument(help: "Run ids or ranges, e.g. 3 4 or 3-8 or 1,3-5 (see `cohort runs list`).") var runIDs:
    [String]
  @Option(help: "Where to write the HTML report.") var out = "report.html"
  @Flag(help: "Replace the --out file if it exists.") var force = false
  @Option(help: "Central test accuracy for \"rounds to target\" (between 0 and 1).") var target: Double?
  @Option(help: "The report's title.") var title = "Cohort comparison"
  @Option(help: "Also write each chart as its own SVG file into this directory.") var svgDir: String?

  func validate() throws {
    guard !runIDs.isEmpty else { throw ValidationError("name at least one run id (see `cohort runs list`)") }
    _ = try Self.parseIDs(runIDs)
    if let target, !(target > 0 && target <= 1) {
      throw ValidationError("--target is an accuracy between 0 and 1, not \(target)")
    }
  }

  func run() throws {
    try OutputFile.refuseOverwrite([out], force: force)
    let store = try db.open()
    try Self.write(
      store: store, ids: try Self.parseIDs(runIDs), title: title, target: target, out: out, svgDir: svgDir,
      force: force, command: "cohort report \(runIDs.joined(separator: " "))", database: db.path)
  }

  /// Run ids as arguments give them (each an id or a list of ids and ranges), once each, in order.
  static func parseIDs(_ arguments: [String]) throws -> [RunID] {
    var ids: [RunID] = []
    var seen = Set<RunID>()
    for argument in arguments {
      guard let list = RunID.list(argument) else {
        throw ValidationError(
          "'\(argument)' is not a run id or range; write e.g. 3, 3-8 or 1,3-5 (at most \(RunID.listLimit) ids)"
        )
      }
      for id in list where seen.insert(id).inserted { ids.append(id) }
    }
    guard ids.count <= RunID.listLimit else { throw ValidationError("at most \(RunID.listLimit) run ids") }
    return ids
  }

  /// The runs' series, as the report draws them (see `RunGrouping`).
  static func groups(store: ResultsStore, summaries: [RunSummary]) throws(CohortError) -> [RunGrouping.Group]
  {
    try RunGrouping.group(
      summaries.map { s throws(CohortError) in
        RunGrouping.Run(
          id: s.id, name: s.name, labels: s.labels, configuration: try store.configurationFingerprint(s.id))
      })
  }

  /// Writes the HTML report on `ids` and prints its summary table; shared with `cohort compare`.
  static func write(
    store: ResultsStore, ids: [RunID], title: String, target: Double?, out: String, svgDir: String? = nil,
    force: Bool = false, command: String, database: String
  ) throws {
    var summaries: [RunID: RunSummary] = [:]
    var rounds: [RunID: [RoundRecord]] = [:]
    var deviceEvaluations: [RunID: [DeviceEvaluationRecord]] = [:]
    do throws(CohortError) {
      for id in ids { summaries[id] = try store.run(id) }
      for id in ids {
        let records = try store.rounds(id)
        guard records.contains(where: { $0.evalAccuracy != nil }) else {
          throw CohortError(
            .invalidData,
            "run \(id) (\(summaries[id]!.name)) has no evaluated rounds (\(records.count) rounds, none with a test "
              + "accuracy)",
            fix: "leave it out, or run its plan with `server.evaluation.every` set so rounds are evaluated")
        }
        rounds[id] = records
        deviceEvaluations[id] = try store.deviceEvaluations(id)
      }
    } catch {
      throw error.exit()
    }

    let groups: [RunGrouping.Group]
    do throws(CohortError) {
      groups = try Self.groups(store: store, summaries: ids.map { summaries[$0]! })
    } catch {
      throw error.exit()
    }
    let series = groups.map { group in
      ReportSeries(
        label: group.label, runs: group.runs.map { rounds[$0]! },
        deviceEvaluations: group.runs.map { deviceEvaluations[$0]! })
    }
    var notes = [
      "Generated by `\(command)` from \(database).",
      target.map { "Accuracy target: \(Format.fixed($0, 4))." } ?? "No accuracy target given (--target).",
    ]
    for group in groups {
      let runs = group.runs.map { id in
        let s = summaries[id]!
        return
          "run \(id) (seed \(s.seed), plan \(s.planName), \(s.roundsCommitted) rounds, \(s.status.rawValue))"
      }
      let first = summaries[group.runs[0]]!.labels
      let origin = [first.experiment.map { "experiment \($0)" }, first.scenario.map { "scenario \($0)" }]
        .compactMap { $0 }.joined(separator: ", ")
      notes.append(
        "\(group.label)\(origin.isEmpty ? "" : " (\(origin))"): " + runs.joined(separator: "; ") + ".")
    }
    let report = ComparisonReport(title: title, series: series, target: target, notes: notes)

    let svgFiles = svgDir.map { dir in
      report.figures().map { ((dir as NSString).appendingPathComponent($0.name + ".svg"), $0.standaloneSVG) }
    }
    // The HTML was checked before anything ran; the SVG files' names are known only now.
    try OutputFile.refuseOverwrite(svgFiles?.map { $0.0 } ?? [], force: force)
    do {
      let dir = (out as NSString).deletingLastPathComponent
      if !dir.isEmpty {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      }
      try report.html().write(toFile: out, atomically: true, encoding: .utf8)
    } catch {
      throw CohortError(.io, "cannot write \(out): \(error.localizedDescription)").exit()
    }
    if let svgDir, let svgFiles {
      do {
        try FileManager.default.createDirectory(atPath: svgDir, withIntermediateDirectories: true)
        for (path, svg) in svgFiles { try svg.write(toFile: path, atomically: true, encoding: .utf8) }
      } catch {
        throw CohortError(.io, "cannot write the SVG files into \(svgDir): \(error.localizedDescription)")
          .exit()
      }
    }

    let rows = report.summaryRows()
    let columns = SummaryRow.columns(for: rows)
    let table = Table(columns)
    for row in rows { table.add(row.cells(in: columns)) }
    print(table.rendered(), terminator: "")
    print("wrote \(out)" + (svgDir.map { " and its charts as SVG files in \($0)" } ?? ""))
  }
}
