public import CohortStore

/// How `cohort report` turns runs into series.
///
/// The rule: a run named `NAME seed N` (a space, the word `seed`, optionally `=` or spaces, then
/// digits, at the end of the name; `seed` in any case) belongs to the series `NAME`, together with
/// every other given run with the same `NAME`, whatever its seed. So `fedadam:server_learning_rate=0.01 seed 1` and
/// `fedadam:server_learning_rate=0.01 seed 3` form one series `fedadam:server_learning_rate=0.01` with two seeds. A run whose name
/// has no such suffix is a series of its own, even if another run has the same name (it could be
/// a different scenario); when two series would get the same label, each gets its run id
/// appended ("default (run 2)"). Series keep the order in which their first run was given.
public enum RunGrouping {
  public struct Group: Sendable, Hashable {
    public var label: String
    public var runs: [RunID]
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

  /// Groups runs (each given once) into series.
  public static func group(_ runs: [(id: RunID, name: String)]) -> [Group] {
    var groups: [Group] = []
    var seeded: [String: Int] = [:]  // series name → index in `groups`
    for run in runs {
      if let name = seriesName(run.name) {
        if let index = seeded[name] {
          groups[index].runs.append(run.id)
        } else {
          seeded[name] = groups.count
          groups.append(Group(label: name, runs: [run.id]))
        }
      } else {
        groups.append(Group(label: run.name, runs: [run.id]))
      }
    }
    // Same label twice: tell them apart by their run ids.
    let labels = groups.map(\.label)
    for i in groups.indices where labels.filter({ $0 == labels[i] }).count > 1 {
      let ids = groups[i].runs.map(\.description).joined(separator: ", ")
      groups[i].label += groups[i].runs.count == 1 ? " (run \(ids))" : " (runs \(ids))"
    }
    return groups
  }
}
