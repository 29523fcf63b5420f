public import CohortStore

/// How `cohort report` turns runs into series.
///
/// A series is one configuration run with one or more seeds. Runs belong to the same series when
/// they have the same series name and the same configuration:
///
/// - the series name of a run that `cohort compare` labelled is its scenario and variant
///   (`tiny-a · fedadam`; just the variant when every run given is of one scenario);
/// - otherwise it is the run's name without a `seed N` suffix (a space, the word `seed`,
///   optionally `=` or spaces, then digits, at the end; `seed` in any case). So
///   `fedadam:server_learning_rate=0.01 seed 1` and `… seed 3` are one series. A name with no
///   such suffix is a series of its own, even if another run has the same name;
/// - the configuration is the run's whole scenario, plan included, with its seed left out
///   (`Run.configuration`, a fingerprint the caller computes). Runs with the same name but a
///   different scenario are never merged into one series: `fedavg seed 1` on scenario A and
///   `fedavg seed 2` on scenario B are two series. When no fingerprint is given, the name alone
///   decides.
///
/// When two series would get the same label, each gets its run ids appended
/// ("default (run 2)"). Series keep the order in which their first run was given.
public enum RunGrouping {
  public struct Group: Sendable, Hashable {
    public var label: String
    public var runs: [RunID]
  }

  /// One run as grouping sees it.
  public struct Run: Sendable, Hashable {
    public var id: RunID
    public var name: String
    public var labels: RunLabels
    /// The run's configuration without its seed (e.g. a hash of its scenario with the seed set to
    /// 0); nil when unknown.
    public var configuration: String?

    public init(id: RunID, name: String, labels: RunLabels = RunLabels(), configuration: String? = nil) {
      self.id = id
      self.name = name
      self.labels = labels
      self.configuration = configuration
    }
  }

  /// The series name of a run named `NAME seed N`, or nil when the name has no seed suffix.
  public static func seriesName(_ runName: String) -> String? {
    let characters = Array(runName)
    var end = characters.count
    while end > 0, characters[end - 1].isASCII, characters[end - 1].isNumber { end -= 1 }
    guard end < characters.count else { return nil }
    while end > 0, characters[end - 1] == " " || characters[end - 1] == "=" { end -= 1 }
    guard end >= 4, String(characters[(end - 4)..<end]).lowercased() == "seed" else { return nil }
    end -= 4
    guard end > 0, characters[end - 1] == " " else { return nil }
    var name = characters[..<(end - 1)]
    while name.last == " " { name.removeLast() }
    return name.isEmpty ? nil : String(name)
  }

  /// Groups runs (each given once) into series by name only.
  public static func group(_ runs: [(id: RunID, name: String)]) -> [Group] {
    group(runs.map { Run(id: $0.id, name: $0.name) })
  }

  /// Groups runs (each given once) into series.
  public static func group(_ runs: [Run]) -> [Group] {
    // Show the scenario in labels only when there is more than one to tell apart.
    let scenarios = Set(runs.compactMap { $0.labels.variant == nil ? nil : $0.labels.scenario })
    var groups: [Group] = []
    var index: [String: Int] = [:]  // series key → index in `groups`
    for run in runs {
      let name: String?
      if let variant = run.labels.variant {
        name = scenarios.count > 1 ? "\(run.labels.scenario ?? "?") · \(variant)" : variant
      } else {
        name = seriesName(run.name)
      }
      guard let name else {
        groups.append(Group(label: run.name, runs: [run.id]))
        continue
      }
      // The key is unambiguous: the name cannot contain a NUL.
      let key = [
        run.labels.variant == nil ? "name" : "labels", run.labels.scenario ?? "", name,
        run.configuration ?? "",
      ].joined(separator: "\u{0}")
      if let i = index[key] {
        groups[i].runs.append(run.id)
      } else {
        index[key] = groups.count
        groups.append(Group(label: name, runs: [run.id]))
      }
    }
    // Same label twice: tell them apart by their run ids.
    let labels = groups.map(\.label)
    for i in groups.indices where labels.filter({ $0 == labels[i] }).count > 1 {
      let ids = RunID.compact(groups[i].runs)
      groups[i].label += groups[i].runs.count == 1 ? " (run \(ids))" : " (runs \(ids))"
    }
    return groups
  }
}
