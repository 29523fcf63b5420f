public import CohortCore
import Foundation

/// Loads a LEAF benchmark file (Caldas et al. 2018): FEMNIST, CelebA features, synthetic, …
///
/// The file is a JSON object `{"users": [...], "num_samples": [...], "user_data": {user: {"x":
/// [...], "y": [...]}}}`. Each `x` entry must be a vector of numbers, all of one length (FEMNIST:
/// 784 pixels); each `y` a non-negative integer label. Users become clients, in the order of
/// `users`, with their examples contiguous. `num_samples`, when present, must agree with the
/// lengths of `x` and `y`. Shakespeare and Sent140 hold text in `x` and are rejected for now with
/// a message saying so: they need a tokenizer first.
///
/// Examples have shape `[d]`; set `featureShape` afterwards (e.g. `[1, 28, 28]` for FEMNIST)
/// when a model wants images.
public enum LEAFDataset {
  /// - Parameters:
  ///   - classes: the number of classes, when the file may not contain the highest label (a
  ///     FEMNIST shard need not hold all 62); labels must then be below it. Defaults to the highest
  ///     label plus one.
  public static func load(path: String, classes: Int? = nil) throws(CohortError) -> Dataset {
    try load(paths: [path], classes: classes)
  }

  /// Loads several LEAF files (e.g. the shards `all_data_0.json` … of FEMNIST) as one dataset.
  /// A user that appears in more than one file is one client.
  public static func load(paths: [String], classes: Int? = nil) throws(CohortError) -> Dataset {
    if let classes, classes < 1 || classes > DataLimits.maximumClasses {
      throw CohortError(
        .invalidConfiguration, "classes is \(classes); expected 1…\(DataLimits.maximumClasses)")
    }
    guard !paths.isEmpty else {
      throw CohortError(.invalidConfiguration, "no LEAF files given; expected at least one path")
    }
    var builder = Builder(classes: classes)
    for path in paths {
      let bytes = try DataFile.read(path)
      try builder.add(bytes, path: path)
    }
    return try builder.finish(paths: paths)
  }

  private struct Builder {
    let classes: Int?
    var features: [Float] = []
    var labels: [Int32] = []
    var owners: [Int32] = []
    var names: [String] = []
    var clientIndex: [String: Int32] = [:]
    /// Feature length, fixed by the first example seen, and where that was.
    var dimension: Int?
    var dimensionSource = ""

    init(classes: Int?) { self.classes = classes }

    mutating func add(_ bytes: [UInt8], path: String) throws(CohortError) {
      func fail(_ jsonPath: String, _ message: String) -> CohortError {
        CohortError(.invalidData, "\(path): \(jsonPath): \(message)")
      }
      let root: Any
      do {
        root = try JSONSerialization.jsonObject(with: Data(bytes))
      } catch {
        let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
        throw CohortError(
          .invalidData,
          "\(path): not valid JSON: \(detail ?? String(describing: error)); expected a LEAF object "
            + "with users, num_samples and user_data")
      }
      guard let object = root as? [String: Any] else {
        throw fail("$", "found \(kind(root)); expected an object with users, num_samples and user_data")
      }
      guard let usersValue = object["users"] else {
        throw fail(
          "$",
          "no \"users\" key (keys present: \(DataLimits.list(object.keys.sorted()))); "
            + "expected a list of user names")
      }
      guard let users = usersValue as? [Any] else {
        throw fail("$.users", "found \(kind(usersValue)); expected a list of user names")
      }
      guard let dataValue = object["user_data"] else {
        throw fail(
          "$",
          "no \"user_data\" key (keys present: \(DataLimits.list(object.keys.sorted()))); "
            + "expected an object mapping each user to its x and y")
      }
      guard let userData = dataValue as? [String: Any] else {
        throw fail("$.user_data", "found \(kind(dataValue)); expected an object mapping users to x and y")
      }
      var declared: [Any]?
      if let counts = object["num_samples"] {
        guard let list = counts as? [Any], list.count == users.count else {
          throw fail(
            "$.num_samples",
            "found \(kind(counts)); expected a list of \(users.count) counts, one per user")
        }
        declared = list
      }

      var listed = Set<String>()
      for (u, userValue) in users.enumerated() {
        guard let user = userValue as? String else {
          throw fail("$.users[\(u)]", "found \(kind(userValue)); expected a user name (a string)")
        }
        listed.insert(user)
        let userPath = "$.user_data[\(quoted(user))]"
        guard let entryValue = userData[user] else {
          throw fail("$.user_data", "no entry for user \(quoted(user)) listed at $.users[\(u)]")
        }
        guard let entry = entryValue as? [String: Any] else {
          throw fail(userPath, "found \(kind(entryValue)); expected an object with \"x\" and \"y\"")
        }
        guard let xs = entry["x"] as? [Any] else {
          throw fail("\(userPath).x", "found \(kind(entry["x"])); expected a list of feature vectors")
        }
        guard let ys = entry["y"] as? [Any] else {
          throw fail("\(userPath).y", "found \(kind(entry["y"])); expected a list of labels")
        }
        guard xs.count == ys.count else {
          throw fail(userPath, "x has \(xs.count) entries but y has \(ys.count); expected equal lengths")
        }
        if let declared {
          guard let n = integer(declared[u]), n == xs.count else {
            throw fail(
              "$.num_samples[\(u)]",
              "found \(describe(declared[u])) for user \(quoted(user)); expected \(xs.count), "
                + "the length of its x and y")
          }
        }

        let client: Int32
        if let known = clientIndex[user] {
          client = known
        } else {
          client = Int32(names.count)
          clientIndex[user] = client
          names.append(user)
        }
        for (i, row) in xs.enumerated() {
          let rowPath = "\(userPath).x[\(i)]"
          guard let vector = row as? [Any] else {
            if row is String {
              throw fail(
                rowPath,
                "found a string; only numeric feature vectors are supported now "
                  + "(LEAF Shakespeare and Sent140 hold text, which needs a tokenizer)")
            }
            throw fail(rowPath, "found \(kind(row)); expected a list of numbers")
          }
          if let dimension {
            guard vector.count == dimension else {
              throw fail(
                rowPath,
                "a vector of \(vector.count) numbers; expected \(dimension) as at "
                  + dimensionSource)
            }
          } else {
            guard !vector.isEmpty else { throw fail(rowPath, "an empty vector; expected numbers") }
            dimension = vector.count
            dimensionSource = "\(path): \(rowPath)"
            features.reserveCapacity(vector.count * xs.count)
          }
          for (j, element) in vector.enumerated() {
            guard let value = number(element), let f = NumberParsing.float(value) else {
              if element is String || element is [Any] {
                throw fail(
                  "\(rowPath)[\(j)]",
                  "found \(kind(element)); only numeric feature vectors are "
                    + "supported now (LEAF Sent140 holds text, which needs a tokenizer)")
              }
              throw fail(
                "\(rowPath)[\(j)]",
                "found \(describe(element)); expected a finite number within "
                  + "the range of Float")
            }
            features.append(f)
          }
          let limit = classes ?? DataLimits.maximumClasses
          guard let label = number(ys[i]).flatMap({ NumberParsing.label($0, below: limit) }) else {
            let note = ys[i] is String ? " (text labels, as in Shakespeare, are not supported yet)" : ""
            throw fail(
              "\(userPath).y[\(i)]",
              "found \(describe(ys[i])); expected a non-negative integer label "
                + "below \(limit)\(classes == nil ? "" : " (classes)")\(note)")
          }
          labels.append(label)
          owners.append(client)
        }
      }
      for user in userData.keys.sorted() where !listed.contains(user) {
        throw fail(
          "$.user_data[\(quoted(user))]",
          "user \(quoted(user)) is not listed in $.users; "
            + "expected every user_data key to be a listed user")
      }
    }

    func finish(paths: [String]) throws(CohortError) -> Dataset {
      guard let dimension, let maxLabel = labels.max() else {
        throw CohortError(
          .invalidData,
          "\(paths.joined(separator: ", ")): no examples in $.user_data; expected at least one")
      }
      return Dataset(
        features: features, labels: labels, featureShape: [dimension],
        classes: classes ?? Int(maxLabel) + 1, clients: owners, clientNames: names)
    }
  }

  /// A JSON number as a Double; nil for anything else, booleans included.
  private static func number(_ value: Any) -> Double? {
    guard let n = value as? NSNumber, !isBoolean(n) else { return nil }
    return n.doubleValue
  }

  /// A JSON number that is a whole number, as an Int.
  private static func integer(_ value: Any) -> Int? {
    guard let d = number(value), d.rounded() == d, abs(d) < 1e15 else { return nil }
    return Int(d)
  }

  /// JSONSerialization returns `true`/`false` as NSNumbers of type char ('c'); no JSON number is one.
  private static func isBoolean(_ n: NSNumber) -> Bool {
    String(cString: n.objCType) == "c"
  }

  private static func kind(_ value: Any?) -> String {
    switch value {
    case nil: return "nothing"
    case is NSNull: return "null"
    case is String: return "a string"
    case let n as NSNumber: return isBoolean(n) ? "a boolean" : "a number"
    case is [Any]: return "a list"
    case is [String: Any]: return "an object"
    default: return "a value of an unexpected type"
    }
  }

  /// A short rendering of a scalar for messages, or its kind for containers.
  private static func describe(_ value: Any) -> String {
    if let n = integer(value) { return "\(n)" }
    if let d = number(value) { return "\(d)" }
    if let s = value as? String { return "the string \(quoted(String(s.prefix(40))))" }
    return kind(value)
  }

  private static func quoted(_ s: String) -> String {
    "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
  }
}
