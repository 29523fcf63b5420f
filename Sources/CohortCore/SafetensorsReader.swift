public import Foundation

/// Reads weights from a safetensors file (https://github.com/huggingface/safetensors, the format
/// `SafetensorsWriter` writes and PyTorch, NumPy and JAX export): an 8-byte little-endian header
/// length N, N bytes of JSON header mapping each tensor's name to
/// `{"dtype", "shape", "data_offsets": [begin, end]}` (byte offsets into the data section that
/// follows; an optional `__metadata__` maps strings to strings), then the tensors' bytes.
///
/// A file is untrusted input: the header length is bounded, every offset, size and shape product
/// is checked (overflow included) before anything is allocated or read, the tensors must tile the
/// data section exactly (no gaps, no overlaps, nothing past its end, as the format requires), and
/// every value must be finite. `F32` is read as is; `F64`, `F16` and `BF16` are converted to
/// Float32 (F64 values beyond Float32's range are refused as non-finite); other dtypes are refused.
///
/// Tensors are matched to a model's layout by name and shape: the names are the layout's
/// (`dense0.weight`, `dense0.bias`, `conv0.weight`, …, numbered per layer kind from the input),
/// the shapes PyTorch's (`nn.Linear`'s weight `[out, in]`, `nn.Conv2d`'s
/// `[out_channels, in_channels, k, k]`), so a file `cohort model export` wrote reads back as is.
public enum SafetensorsReader {
  /// The largest header accepted: the format's own bound (100 MB).
  public static let maximumHeaderBytes = 100_000_000

  /// One tensor as the header describes it, checked against the data section.
  public struct Entry: Sendable, Hashable {
    public var name: String
    public var dtype: String
    public var shape: [Int]
    /// Byte range in the data section.
    public var bytes: Range<Int>
    /// Elements: the product of `shape`.
    public var count: Int
  }

  /// Bytes per element of the dtypes read.
  static let elementBytes: [String: Int] = ["F32": 4, "F64": 8, "F16": 2, "BF16": 2]

  /// Reads the safetensors file at `path` as weights of `layout`, after checking its size.
  public static func load(path: String, layout: WeightsLayout) throws(CohortError) -> Weights {
    // The file's size bounds what is read: every value at most 8 bytes (F64) after the header.
    let (perValue, o1) = layout.count.multipliedReportingOverflow(by: 8)
    let (limit, o2) = perValue.addingReportingOverflow(8 + maximumHeaderBytes)
    let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value
    guard let size else {
      throw CohortError(
        .io,
        "cannot read \(path): \(FileManager.default.fileExists(atPath: path) ? "unreadable" : "no such file")",
        fix: "check model.initial; a relative path is relative to the plan file's directory")
    }
    guard o1 || o2 || size <= Int64(limit) else {
      throw CohortError(
        .invalidData,
        "\(path) is \(size) bytes, more than a model of \(layout.count) parameters can take (\(limit))",
        fix: "give the safetensors file of this plan's model")
    }
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
      throw CohortError(.io, "cannot read \(path): \(error.localizedDescription)")
    }
    return try weights(data, layout: layout, source: path)
  }

  /// Parses `data` as a safetensors file and returns its tensors laid out as `layout`; `source`
  /// names the file in messages.
  public static func weights(_ data: Data, layout: WeightsLayout, source: String) throws(CohortError)
    -> Weights
  {
    let (entries, dataStart) = try header(data, source: source)
    let byName = Dictionary(entries.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    var problems: [String] = []
    for t in layout.tensors {
      guard let e = byName[t.name] else {
        problems.append("tensor \"\(t.name)\" is missing (expected shape \(t.shape))")
        continue
      }
      if e.shape != t.shape {
        problems.append("tensor \"\(t.name)\" has shape \(e.shape), expected \(t.shape)")
      }
    }
    let known = Set(layout.tensors.map(\.name))
    for e in entries.sorted(by: { $0.name < $1.name }) where !known.contains(e.name) {
      problems.append("tensor \"\(e.name)\" (shape \(e.shape)) is not in the model")
    }
    guard problems.isEmpty else {
      let shown = problems.prefix(20).joined(separator: "; ")
      let more = problems.count > 20 ? "; and \(problems.count - 20) more" : ""
      throw CohortError(
        .shapeMismatch, "\(source) does not match the plan's model: \(shown)\(more)",
        fix: "the model's tensors are "
          + layout.tensors.map { "\($0.name) \($0.shape)" }.joined(separator: ", ")
          + " (PyTorch's layout: nn.Linear weight [out, in]); rename or reshape the exported tensors to match"
      )
    }
    var values = [Float](repeating: 0, count: layout.count)
    for (t, offset) in zip(layout.tensors, layout.offsets) {
      guard let e = byName[t.name] else { continue }
      let start = dataStart + e.bytes.lowerBound
      // The index and value of the first element that is not finite as Float32, if any.
      let nonFinite = data.withUnsafeBytes { raw -> (Int, Float)? in
        let bytes = UnsafeRawBufferPointer(rebasing: raw[start..<(start + e.bytes.count)])
        for i in 0..<e.count {
          let v = convert(bytes, index: i, dtype: e.dtype)
          guard v.isFinite else { return (i, v) }
          values[offset + i] = v
        }
        return nil
      }
      if let (i, v) = nonFinite {
        throw CohortError(
          .invalidData,
          "\(source): tensor \"\(e.name)\" holds a non-finite value (\(v)) as Float32 at index \(i)",
          fix: "export finite weights (F64 values must fit Float32)")
      }
    }
    return Weights(layout: layout, values: values)
  }

  /// Element `index` of a tensor's bytes, converted to Float32.
  static func convert(_ bytes: UnsafeRawBufferPointer, index i: Int, dtype: String) -> Float {
    switch dtype {
    case "F64":
      return Float(
        Double(bitPattern: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))))
    case "F16":
      return halfToFloat(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
    case "BF16":
      let bits = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
      return Float(bitPattern: UInt32(bits) << 16)
    default:
      return Float(
        bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
    }
  }

  /// IEEE binary16 to binary32, exactly (every half is a float).
  static func halfToFloat(_ h: UInt16) -> Float {
    let sign: Float = h & 0x8000 != 0 ? -1 : 1
    let exponent = Int((h >> 10) & 0x1f)
    let fraction = Float(h & 0x3ff)
    switch exponent {
    case 0: return sign * fraction * 0x1p-24  // subnormal (and zero)
    case 31: return fraction == 0 ? sign * .infinity : .nan
    default: return sign * (1 + fraction / 1024) * Float(sign: .plus, exponent: exponent - 15, significand: 1)
    }
  }

  /// The header's tensors, checked against the file, and where the data section starts.
  public static func header(_ data: Data, source: String) throws(CohortError) -> (
    entries: [Entry], dataStart: Int
  ) {
    func bad(_ message: String) -> CohortError {
      CohortError(
        .invalidData, "\(source) is not a valid safetensors file: \(message)",
        fix: "write it with safetensors (save_file) or the format as published")
    }
    guard data.count >= 8 else {
      throw bad("it has \(data.count) bytes, fewer than the 8-byte header length")
    }
    let declared = data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    guard declared <= UInt64(maximumHeaderBytes), let headerLength = Int(exactly: declared),
      headerLength <= data.count - 8
    else {
      throw bad(
        "the header length \(declared) is larger than the file's \(data.count - 8) remaining bytes or the "
          + "\(maximumHeaderBytes)-byte bound")
    }
    guard headerLength >= 2 else {
      throw bad("the header of \(headerLength) bytes cannot hold a JSON object")
    }
    let dataStart = 8 + headerLength
    let dataLength = data.count - dataStart
    let json = data.subdata(in: (data.startIndex + 8)..<(data.startIndex + dataStart))
    guard json.first == UInt8(ascii: "{") else {
      throw bad("the header does not start with a JSON object '{'")
    }
    let raw: RawHeader
    do { raw = try JSONDecoder().decode(RawHeader.self, from: json) } catch {
      throw bad("the header is not the JSON safetensors describes (\(Self.describe(error)))")
    }

    var entries: [Entry] = []
    for (name, e) in raw.tensors {
      guard let size = elementBytes[e.dtype] else {
        throw CohortError(
          .invalidData,
          "\(source): tensor \"\(name)\" has dtype \(e.dtype); Cohort reads F32 and converts F64, F16 and BF16",
          fix: "export the weights as float32 (e.g. tensor.float() in PyTorch, astype(np.float32) in NumPy)")
      }
      guard e.dataOffsets.count == 2, e.shape.count <= 16 else {
        throw bad("tensor \"\(name)\" needs data_offsets [begin, end] and at most 16 dimensions")
      }
      var count = 1
      for d in e.shape {
        let (p, overflow) = count.multipliedReportingOverflow(by: d)
        guard d >= 0, !overflow else {
          throw bad("tensor \"\(name)\" has shape \(e.shape), too large or negative")
        }
        count = p
      }
      let (byteCount, overflow) = count.multipliedReportingOverflow(by: size)
      let (begin, end) = (e.dataOffsets[0], e.dataOffsets[1])
      guard !overflow, begin >= 0, begin <= end, end <= dataLength else {
        throw bad(
          "tensor \"\(name)\" has data_offsets [\(begin), \(end)] outside the \(dataLength)-byte data section"
        )
      }
      guard end - begin == byteCount else {
        throw bad(
          "tensor \"\(name)\" of shape \(e.shape) and dtype \(e.dtype) needs \(byteCount) bytes, but its "
            + "data_offsets [\(begin), \(end)] span \(end - begin)")
      }
      entries.append(Entry(name: name, dtype: e.dtype, shape: e.shape, bytes: begin..<end, count: count))
    }
    // The tensors must cover the data section exactly once, in some order.
    var covered = 0
    for e in entries.sorted(by: {
      ($0.bytes.lowerBound, $0.bytes.upperBound) < ($1.bytes.lowerBound, $1.bytes.upperBound)
    }) {
      guard e.bytes.lowerBound == covered else {
        throw bad(
          e.bytes.lowerBound < covered
            ? "tensor \"\(e.name)\" at bytes \(e.bytes) overlaps the tensor before it (which ends at \(covered))"
            : "bytes \(covered)..<\(e.bytes.lowerBound) of the data section belong to no tensor")
      }
      covered = e.bytes.upperBound
    }
    guard covered == dataLength else {
      throw bad("bytes \(covered)..<\(dataLength) of the data section belong to no tensor")
    }
    return (entries, dataStart)
  }

  static func describe(_ error: any Error) -> String {
    switch error {
    case DecodingError.dataCorrupted(let c), DecodingError.typeMismatch(_, let c),
      DecodingError.keyNotFound(_, let c), DecodingError.valueNotFound(_, let c):
      let path = c.codingPath.map(\.stringValue).joined(separator: ".")
      return path.isEmpty ? c.debugDescription : "\(path): \(c.debugDescription)"
    default: return "\(error)"
    }
  }

  /// The header's JSON: every key but `__metadata__` is a tensor.
  private struct RawHeader: Decodable {
    struct Key: CodingKey {
      var stringValue: String
      var intValue: Int? { nil }
      init(stringValue: String) { self.stringValue = stringValue }
      init?(intValue: Int) { nil }
    }

    struct Tensor: Decodable {
      var dtype: String
      var shape: [Int]
      var dataOffsets: [Int]

      enum CodingKeys: String, CodingKey {
        case dtype, shape
        case dataOffsets = "data_offsets"
      }
    }

    var tensors: [(String, Tensor)] = []

    init(from decoder: any Decoder) throws {
      let c = try decoder.container(keyedBy: Key.self)
      for key in c.allKeys {
        if key.stringValue == "__metadata__" {
          _ = try c.decode([String: String].self, forKey: key)
        } else {
          tensors.append((key.stringValue, try c.decode(Tensor.self, forKey: key)))
        }
      }
    }
  }
}
