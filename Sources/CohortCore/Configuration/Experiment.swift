import Foundation
import Yams

/// A comparison to run: every scenario with every variant and every seed, one simulation each.
///
/// Written as YAML (`cohort compare --experiment FILE`) or given as flags (`--scenario`,
/// `--variant`, `--seeds`):
///
/// ```yaml
/// name: strategies-on-two-tasks     # optional; the file's name without extension
/// scenarios: [a.yaml, b.yaml]       # relative to this file
/// variants:
///   - label: fedavg                 # no overrides: the scenario as written
///   - label: fedadam
///     set: {server.strategy.kind: fedadam, server.strategy.server_learning_rate: 0.01}
/// seeds: 3                          # the scenario's seed, +1, +2; or a list: [1, 2, 3]
/// rounds: 20                        # optional: every plan's server.rounds
/// target: 0.6                       # optional: the report's accuracy target
/// ```
///
/// An override's key is a dotted path into the scenario's plan, in the plan's own keys
/// (`device.epochs`, `server.strategy`, `compression.kind`); a key starting with `scenario.`
/// reaches the rest of the scenario instead (`scenario.partition.alpha`). Its value is any YAML
/// value, a whole section included. Overrides are applied to the YAML before it is validated, so
/// a wrong key or value is reported as in a plan file, naming the variant and the key.
public struct Experiment: Sendable, Hashable {
  /// One plan override: a dotted key and a YAML value (as YAML text).
  public struct Override: Sendable, Hashable {
    public var key: String
    public var yaml: String

    public init(key: String, yaml: String) {
      self.key = key
      self.yaml = yaml
    }
  }

  /// A label and the overrides that make it.
  public struct Variant: Sendable, Hashable {
    public var label: String
    public var overrides: [Override]

    public init(label: String, overrides: [Override] = []) {
      self.label = label
      self.overrides = overrides
    }

    /// A variant as written on the command line: `label` or `label:key=value,key=value`. A piece
    /// without `=` continues the previous value, so `k={a: 1, b: 2}` stays one value.
    public static func parse(_ text: String) -> Result<Variant, ConfigurationError> {
      func fail(_ message: String) -> Result<Variant, ConfigurationError> {
        .failure(
          ConfigurationError(issues: [
            ConfigurationIssue(file: "--variant", line: nil, keyPath: "", value: text, message: message)
          ]))
      }
      let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
      guard let label = parts.first?.trimmingCharacters(in: .whitespaces), !label.isEmpty else {
        return fail("expected label or label:key=value,key=value, e.g. fedadam:server.strategy.kind=fedadam")
      }
      var pairs: [String] = []
      for piece in (parts.count > 1 ? parts[1] : "").split(separator: ",") {
        if piece.contains("=") || pairs.isEmpty {
          pairs.append(String(piece))
        } else {
          pairs[pairs.count - 1] += "," + piece
        }
      }
      var overrides: [Override] = []
      for pair in pairs {
        let kv = pair.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        guard kv.count == 2, !kv[0].isEmpty, !kv[1].isEmpty else {
          return fail("expected key=value after the label, found '\(pair)'")
        }
        overrides.append(Override(key: kv[0], yaml: kv[1]))
      }
      return .success(Variant(label: label, overrides: overrides))
    }
  }

  /// Which seeds each (scenario, variant) runs with.
  public enum Seeds: Sendable, Hashable {
    /// The scenario's own seed and the next `n − 1`.
    case count(Int)
    /// Exactly these.
    case list([UInt64])

    /// `3` (a count) or `1,2,3` / `1-3` (a list), as `--seeds` takes them.
    public static func parse(_ text: String) -> Seeds? {
      if let n = Int(text) { return (1...10_000).contains(n) ? .count(n) : nil }
      var seeds: [UInt64] = []
      for part in text.split(separator: ",", omittingEmptySubsequences: false) {
        let bounds = part.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard let low = bounds.first.flatMap({ UInt64($0.trimmingCharacters(in: .whitespaces)) }) else {
          return nil
        }
        var high = low
        if bounds.count == 2 {
          guard let h = UInt64(bounds[1].trimmingCharacters(in: .whitespaces)), h >= low, h - low < 10_000
          else {
            return nil
          }
          high = h
        }
        for s in low...high where !seeds.contains(s) { seeds.append(s) }
        if seeds.count > 10_000 { return nil }
      }
      return seeds.isEmpty ? nil : .list(seeds)
    }

    /// The seeds for a scenario whose own seed is `base`.
    public func seeds(base: UInt64) -> [UInt64] {
      switch self {
      case .count(let n): return (0..<UInt64(n)).map { base &+ $0 }
      case .list(let list): return list
      }
    }

    public var count: Int {
      switch self {
      case .count(let n): return n
      case .list(let list): return list.count
      }
    }
  }

  public var name: String
  /// Scenario files, as paths usable from the current directory.
  public var scenarios: [String]
  public var variants: [Variant]
  public var seeds: Seeds
  public var rounds: Int?
  public var target: Double?

  public init(
    name: String, scenarios: [String], variants: [Variant], seeds: Seeds, rounds: Int? = nil,
    target: Double? = nil
  ) {
    self.name = name
    self.scenarios = scenarios
    self.variants = variants
    self.seeds = seeds
    self.rounds = rounds
    self.target = target
  }

  static let keys = ["name", "scenarios", "variants", "seeds", "rounds", "target"]

  public static func load(path: String) throws(ConfigurationError) -> Experiment {
    try parse(yaml: try ConfigurationFile.read(path), file: path)
  }

  /// Parses an experiment; its scenario paths are resolved against `file`'s directory.
  public static func parse(yaml: String, file: String) throws(ConfigurationError) -> Experiment {
    let log = IssueLog(file: file)
    let directory = URL(fileURLWithPath: file).deletingLastPathComponent()
    let experiment = YAMLDocument.root(yaml: yaml, log: log).flatMap { root -> Experiment? in
      guard let m = root.mapping(allowed: keys) else { return nil }
      let stem = ((file as NSString).lastPathComponent as NSString).deletingPathExtension
      let name = m.optional("name", default: stem) { $0.string() }
      let scenarios = m.required(
        "scenarios", hint: "a list of scenario files, e.g. scenarios: [a.yaml, b.yaml]"
      ) {
        field -> [String]? in
        guard let items = field.sequence() else { return nil }
        guard !items.isEmpty else {
          field.fail("expected at least one scenario file")
          return nil
        }
        let paths = items.map { item -> String? in
          guard let path = item.string() else {
            item.fail("expected a scenario file's path")
            return nil
          }
          return Scenario.resolve(path, in: directory)
        }
        return paths.contains(nil) ? nil : paths.compactMap { $0 }
      }
      let variants = m.optional("variants", default: [Variant(label: "baseline")]) { field -> [Variant]? in
        guard let items = field.sequence() else { return nil }
        guard !items.isEmpty else {
          field.fail("expected at least one variant, e.g. - label: fedavg")
          return nil
        }
        var labels = Set<String>()
        let variants = items.map { item -> Variant? in
          guard let v = item.mapping(allowed: ["label", "set"]) else { return nil }
          let label = v.required("label", hint: "the variant's name in the report, e.g. label: fedadam") {
            $0.string()
          }
          if let label, let field = v["label"], !labels.insert(label).inserted {
            field.fail("another variant already has this label; labels name series, so each must be unique")
          }
          let overrides = v.optional("set", default: []) { set -> [Override]? in
            guard case .mapping(let pairs) = set.node else {
              set.fail("expected a mapping of dotted keys to values, e.g. {device.epochs: 2}")
              return nil
            }
            var out: [Override] = []
            for (k, value) in pairs {
              guard case .scalar(let key) = k, !key.string.isEmpty else {
                set.fail("keys must be dotted plan keys, e.g. server.strategy.kind")
                return nil
              }
              guard let text = try? Yams.serialize(node: value) else {
                set.fail("the value of \(key.string) cannot be written back as YAML")
                return nil
              }
              out.append(Override(key: key.string, yaml: text))
            }
            return out
          }
          return label.map { Variant(label: $0, overrides: overrides) }
        }
        return variants.contains(nil) ? nil : variants.compactMap { $0 }
      }
      let seeds = m.optional("seeds", default: Seeds.count(3)) { field -> Seeds? in
        if case .sequence = field.node {
          let list = field.intList(0...Int.max, count: 1...10_000)
          return list.map { .list($0.map { UInt64($0) }) }
        }
        return field.int(1...10_000).map { .count($0) }
      }
      let rounds = m.optional("rounds") { $0.int(1...10_000_000) }
      let target = m.optional("target") { $0.double(0...1, above: true) }
      guard let scenarios else { return nil }
      return Experiment(
        name: name, scenarios: scenarios, variants: variants, seeds: seeds, rounds: rounds, target: target)
    }
    guard let experiment, log.issues.isEmpty else { throw ConfigurationError(issues: log.issues) }
    return experiment
  }
}

extension Scenario {
  /// The scenario at `path` with `variant`'s overrides applied to its YAML, then validated exactly
  /// as if the file said so. Messages name the file and the variant (`a.yaml with variant fedadam`)
  /// and the key.
  public static func load(path: String, variant: Experiment.Variant) throws(ConfigurationError) -> Scenario {
    let text = try ConfigurationFile.read(path)
    let label = "\(path) with variant \(variant.label)"
    let directory = URL(fileURLWithPath: path).deletingLastPathComponent()
    guard !variant.overrides.isEmpty else { return try parse(yaml: text, file: label, directory: directory) }
    func fail(_ key: String, _ value: String?, _ message: String) -> ConfigurationError {
      ConfigurationError(issues: [
        ConfigurationIssue(file: label, line: nil, keyPath: key, value: value, message: message)
      ])
    }
    do {
      guard var root = try YAMLDocument.compose(yaml: text), case .mapping = root, let planNode = root["plan"]
      else {
        return try parse(yaml: text, file: label, directory: directory)  // reports what is missing
      }
      // A plan in its own file is brought inline, so its keys can be replaced.
      var plan = planNode
      var planDirectory = directory
      if case .scalar(let s) = planNode {
        let planPath = resolve(s.string, in: directory)
        guard let planRoot = try YAMLDocument.compose(yaml: try ConfigurationFile.read(planPath)) else {
          return try parse(yaml: text, file: label, directory: directory)
        }
        plan = planRoot
        planDirectory = URL(fileURLWithPath: planPath).deletingLastPathComponent()
      }
      // `model.initial` is relative to the plan file's directory, and the text parsed below is
      // named by its label, not a path: make it absolute while the plan's directory is known.
      if case .scalar(let s)? = plan["model"]?["initial"], !s.string.hasPrefix("/") {
        plan = try setting(
          Node(resolve(s.string, in: planDirectory)), at: ["model", "initial"][...], in: plan,
          key: "model.initial",
          fail: fail)
      }
      for override in variant.overrides {
        var components = override.key.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard !components.contains(where: \.isEmpty) else {
          throw fail(override.key, override.yaml, "expected a dotted key such as device.epochs")
        }
        let value: Node
        do {
          guard let node = try YAMLDocument.compose(yaml: override.yaml) else {
            throw fail(override.key, override.yaml, "expected a value")
          }
          value = node
        } catch let error as ConfigurationError {
          throw error
        } catch {
          throw fail(override.key, override.yaml, "the value is not valid YAML: \(error)")
        }
        if components.first == "plan" { components.removeFirst() }
        if components.first == "scenario" {
          components.removeFirst()
          guard !components.isEmpty, components.first != "plan" else {
            throw fail(override.key, override.yaml, "name a scenario key after scenario., e.g. scenario.seed")
          }
          root = try setting(value, at: components[...], in: root, key: override.key, fail: fail)
        } else {
          guard !components.isEmpty else { throw fail(override.key, override.yaml, "name a plan key") }
          plan = try setting(value, at: components[...], in: plan, key: override.key, fail: fail)
        }
      }
      root["plan"] = plan
      return try parse(yaml: try Yams.serialize(node: root), file: label, directory: directory)
    } catch let error as ConfigurationError {
      throw error
    } catch {
      throw fail("", nil, "the scenario could not be rewritten: \(error)")
    }
  }

  /// `node` with `value` at the dotted `path`, creating sections that are missing.
  private static func setting(
    _ value: Node, at path: ArraySlice<String>, in node: Node, key: String,
    fail: (String, String?, String) -> ConfigurationError
  ) throws(ConfigurationError) -> Node {
    guard case .mapping = node else {
      throw fail(key, nil, "cannot set \(key): a part of it is a value, not a section")
    }
    var node = node
    let head = path.first!
    if path.count == 1 {
      node[head] = value
      return node
    }
    let child = node[head] ?? Node.mapping(Node.Mapping([]))
    node[head] = try setting(value, at: path.dropFirst(), in: child, key: key, fail: fail)
    return node
  }
}
