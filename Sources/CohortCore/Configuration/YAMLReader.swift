import Foundation
import Yams

/// Collects the issues found while reading one file.
final class IssueLog {
  let file: String
  var issues: [ConfigurationIssue] = []

  init(file: String) { self.file = file }

  func add(_ field: YAMLField, _ message: String, showValue: Bool = true) {
    issues.append(
      ConfigurationIssue(
        file: file, line: field.node.mark?.line, keyPath: field.keyPath,
        value: showValue ? field.display : nil, message: message))
  }

  func add(keyPath: String, line: Int?, _ message: String) {
    issues.append(
      ConfigurationIssue(file: file, line: line, keyPath: keyPath, value: nil, message: message))
  }
}

/// A YAML node together with its key path, read strictly: every accessor checks the type and
/// range, and records an issue (returning nil) instead of throwing, so one pass reports all.
struct YAMLField {
  let node: Node
  let path: [String]
  let log: IssueLog

  var keyPath: String { path.joined(separator: ".") }

  /// The node as the user wrote it, for messages.
  var display: String {
    switch node {
    case .scalar(let s): return s.string
    case .mapping: return "{…}"
    case .sequence(let s):
      return "[" + s.map { YAMLField(node: $0, path: [], log: log).display }.joined(separator: ", ") + "]"
    case .alias: return "*alias"
    }
  }

  private var scalar: Node.Scalar? {
    if case .scalar(let s) = node { return s }
    return nil
  }

  func fail(_ message: String) { log.add(self, message) }

  /// 1-based line of this node, when known.
  var line: Int? { node.mark?.line }

  /// The value under `key` when this node is a mapping that has it; records nothing, for rules
  /// that look across sections after each section has been read (and checked) on its own.
  func child(_ key: String) -> YAMLField? {
    guard case .mapping(let m) = node else { return nil }
    for (k, v) in m {
      if case .scalar(let ks) = k, ks.string == key {
        return YAMLField(node: v, path: path + [key], log: log)
      }
    }
    return nil
  }

  /// This node as true or false without recording an issue when it is neither.
  var peekBool: Bool? {
    guard case .scalar(let s) = node else { return nil }
    return Bool.construct(from: s)
  }

  // MARK: Scalars

  func string() -> String? {
    guard let s = scalar, !(s.style == .plain && ["", "~", "null"].contains(s.string)) else {
      fail("expected text")
      return nil
    }
    return s.string
  }

  func bool() -> Bool? {
    guard let s = scalar, let b = Bool.construct(from: s) else {
      fail("expected true or false")
      return nil
    }
    return b
  }

  func int(_ range: ClosedRange<Int>) -> Int? {
    guard let s = scalar, s.style == .plain, let v = Int(s.string.replacingOccurrences(of: "_", with: ""))
    else {
      fail("expected a whole number in \(Self.describe(range))")
      return nil
    }
    guard range.contains(v) else {
      fail("out of range: expected a whole number in \(Self.describe(range))")
      return nil
    }
    return v
  }

  /// A number in `range`; `above` excludes the lower bound (e.g. a learning rate above 0).
  func double(_ range: ClosedRange<Double>, above: Bool = false) -> Double? {
    let accepted = Self.describe(range, above: above)
    guard let s = scalar, s.style == .plain, let v = Double(s.string.replacingOccurrences(of: "_", with: "")),
      v.isFinite
    else {
      fail("expected a number \(accepted)")
      return nil
    }
    guard range.contains(v), !(above && v == range.lowerBound) else {
      fail("out of range: expected a number \(accepted)")
      return nil
    }
    return v
  }

  /// A duration: a number of seconds, or a number with a unit (`500ms`, `60s`, `5m`, `2h`).
  func duration(_ range: ClosedRange<Double> = 0.001...(365 * 86400)) -> Double? {
    let accepted = "a duration such as 500ms, 60s, 5m or 2h (a bare number means seconds)"
    guard let s = scalar else {
      fail("expected \(accepted)")
      return nil
    }
    let text = s.string.trimmingCharacters(in: .whitespaces)
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
    var seconds: Double?
    if let v = Double(text) {
      seconds = v
    } else {
      for (suffix, factor) in units where text.hasSuffix(suffix) {
        if let v = Double(text.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)) {
          seconds = v * factor
          break
        }
      }
    }
    guard let seconds, seconds.isFinite else {
      fail("expected \(accepted)")
      return nil
    }
    guard range.contains(seconds) else {
      fail("out of range: expected a duration between \(range.lowerBound)s and \(range.upperBound)s")
      return nil
    }
    return seconds
  }

  /// One of a fixed set of words.
  func oneOf(_ options: [String]) -> String? {
    let accepted = "expected one of: " + options.joined(separator: ", ")
    guard let s = scalar else {
      fail(accepted)
      return nil
    }
    guard options.contains(s.string) else {
      let hint = Self.nearest(s.string, in: options).map { " (did you mean \($0)?)" } ?? ""
      fail(accepted + hint)
      return nil
    }
    return s.string
  }

  // MARK: Collections

  func sequence() -> [YAMLField]? {
    guard case .sequence(let seq) = node else {
      fail("expected a list, e.g. [1, 2]")
      return nil
    }
    return seq.enumerated().map { i, n in
      YAMLField(node: n, path: path.dropLast() + ["\(path.last ?? "")[\(i)]"], log: log)
    }
  }

  func intList(_ range: ClosedRange<Int>, count: ClosedRange<Int>) -> [Int]? {
    guard let items = sequence() else { return nil }
    guard count.contains(items.count) else {
      fail("expected a list of \(Self.describe(count)) whole numbers")
      return nil
    }
    let values = items.map { $0.int(range) }
    return values.contains(where: { $0 == nil }) ? nil : values.compactMap { $0 }
  }

  /// This node as a mapping whose keys must all be among `allowed`: an unknown key is an issue
  /// that names the key, lists what is accepted, and suggests the nearest accepted key.
  func mapping(allowed: [String], context: String? = nil) -> YAMLMapping? {
    guard case .mapping(let m) = node else {
      fail("expected a mapping with keys: " + allowed.joined(separator: ", "))
      return nil
    }
    var fields: [String: YAMLField] = [:]
    for (k, v) in m {
      guard case .scalar(let ks) = k else {
        log.add(YAMLField(node: k, path: path, log: log), "keys must be plain words")
        continue
      }
      let key = ks.string
      let field = YAMLField(node: v, path: path + [key], log: log)
      if !allowed.contains(key) {
        let hint = Self.nearest(key, in: allowed).map { "did you mean \($0)? " } ?? ""
        let place = context.map { " for \($0)" } ?? ""
        log.add(
          keyPath: field.keyPath, line: k.mark?.line,
          "unknown key \(Self.quoted(key))\(place); \(hint)accepted keys: \(allowed.joined(separator: ", "))")
        continue
      }
      fields[key] = field
    }
    return YAMLMapping(owner: self, fields: fields)
  }

  // MARK: Helpers

  static func quoted(_ s: String) -> String { "'\(s)'" }

  static func describe(_ r: ClosedRange<Int>) -> String {
    if r.upperBound == Int.max { return "\(r.lowerBound) or more" }
    return "\(r.lowerBound)...\(r.upperBound)"
  }

  static func describe(_ r: ClosedRange<Double>, above: Bool = false) -> String {
    let low = above ? "above \(r.lowerBound)" : "at least \(r.lowerBound)"
    if r.upperBound == .greatestFiniteMagnitude || r.upperBound == .infinity { return low }
    return "\(low) and at most \(r.upperBound)"
  }

  /// The accepted word closest to a misspelling, if it is close enough to be a likely typo.
  static func nearest(_ word: String, in options: [String]) -> String? {
    let scored = options.map { ($0, editDistance(word.lowercased(), $0.lowercased())) }
    guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
    return best.1 <= max(2, word.count / 3) ? best.0 : nil
  }

  static func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a)
    let b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
      current[0] = i
      for j in 1...b.count {
        let cost = a[i - 1] == b[j - 1] ? 0 : 1
        current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
      }
      swap(&previous, &current)
    }
    return previous[b.count]
  }
}

/// The keys of one YAML mapping, already checked against the accepted set.
struct YAMLMapping {
  let owner: YAMLField
  let fields: [String: YAMLField]

  subscript(key: String) -> YAMLField? { fields[key] }

  func has(_ key: String) -> Bool { fields[key] != nil }

  /// A key that must be present: records "missing key" when absent.
  func required<T>(_ key: String, hint: String, _ read: (YAMLField) -> T?) -> T? {
    guard let field = fields[key] else {
      owner.log.add(
        keyPath: (owner.path + [key]).joined(separator: "."), line: owner.node.mark?.line,
        "missing required key; \(hint)")
      return nil
    }
    return read(field)
  }

  /// A key with a default: absent → the default; present but invalid → the default, with an issue.
  func optional<T>(_ key: String, default value: T, _ read: (YAMLField) -> T?) -> T {
    guard let field = fields[key] else { return value }
    return read(field) ?? value
  }

  /// A key whose absence means nil.
  func optional<T>(_ key: String, _ read: (YAMLField) -> T?) -> T? {
    guard let field = fields[key] else { return nil }
    return read(field)
  }

  /// Records an issue for keys present here that do not apply in this case (e.g. `hidden` on a
  /// logistic regression), naming the key that made them inapplicable.
  func reject(_ keys: [String], because reason: String) {
    for key in keys {
      if let field = fields[key] { owner.log.add(field, "does not apply: \(reason)", showValue: false) }
    }
  }
}

/// Parses YAML text into a root field, turning parser errors into issues with line numbers.
enum YAMLDocument {
  /// The most nodes a configuration file may expand to, aliases counted at every use. Plans
  /// and scenarios have a few hundred; the bound stops a small file of nested aliases (a
  /// "billion laughs") from taking minutes and gigabytes to read.
  static let maximumNodes = 100_000

  /// The file's root node, refused when it expands to more than `maximumNodes` nodes.
  static func compose(yaml: String) throws -> Node? {
    guard let node = try Yams.compose(yaml: yaml) else { return nil }
    var budget = maximumNodes
    guard node.fitsExpanded(within: &budget) else {
      throw YAMLTooLarge(
        message:
          "the file expands to more than \(maximumNodes) YAML nodes (through nested aliases); "
          + "write the values out or use fewer aliases")
    }
    return node
  }

  static func root(yaml: String, log: IssueLog) -> YAMLField? {
    do {
      guard let node = try compose(yaml: yaml) else {
        log.add(keyPath: "", line: nil, "the file is empty; expected a YAML mapping")
        return nil
      }
      return YAMLField(node: node, path: [], log: log)
    } catch let error as YAMLTooLarge {
      log.add(keyPath: "", line: nil, error.message)
    } catch let error as YamlError {
      log.add(keyPath: "", line: nil, "not valid YAML: \(error)")
    } catch {
      log.add(keyPath: "", line: nil, "not valid YAML: \(error)")
    }
    return nil
  }
}

/// A configuration file that expands to too many nodes.
struct YAMLTooLarge: Error, CustomStringConvertible {
  var message: String
  var description: String { message }
}

extension Node {
  /// Whether the tree, with every alias expanded where it is used, has at most `budget` nodes.
  /// Stops as soon as the budget is spent, so the check itself costs at most the budget.
  func fitsExpanded(within budget: inout Int) -> Bool {
    budget -= 1
    guard budget >= 0 else { return false }
    switch self {
    case .scalar, .alias: return true
    case .sequence(let sequence):
      for child in sequence where !child.fitsExpanded(within: &budget) { return false }
      return true
    case .mapping(let mapping):
      for (key, value) in mapping {
        guard key.fitsExpanded(within: &budget), value.fitsExpanded(within: &budget) else { return false }
      }
      return true
    }
  }
}
