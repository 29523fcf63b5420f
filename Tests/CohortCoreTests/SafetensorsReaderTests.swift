import CohortCore
import Foundation
import Testing

/// A safetensors file from a header (JSON text) and a data section.
private func file(_ header: String, _ data: [UInt8]) -> Data {
  var out = Data()
  let text = Array(header.utf8)
  withUnsafeBytes(of: UInt64(text.count).littleEndian) { out.append(contentsOf: $0) }
  out.append(contentsOf: text)
  out.append(contentsOf: data)
  return out
}

private func f32(_ values: [Float]) -> [UInt8] { Float32LittleEndian.bytes(values) }

private func tensorEntry(_ name: String, _ shape: [Int], _ begin: Int, _ end: Int, dtype: String = "F32")
  -> String
{
  "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":[\(begin),\(end)]}"
}

/// A dense layer 3 → 2: weight [2, 3], bias [2].
private let layout = WeightsLayout([TensorSpec("dense0.weight", [2, 3]), TensorSpec("dense0.bias", [2])])

private func refusal(_ data: Data, layout: WeightsLayout = layout) -> CohortError? {
  do throws(CohortError) {
    _ = try SafetensorsReader.weights(data, layout: layout, source: "w.safetensors")
    return nil
  } catch { return error }
}

@Suite struct SafetensorsReaderTests {
  @Test func tensorsAreMappedByNameWhateverTheirOrderInTheFile() throws {
    // Bias first in the file, weight first in the layout; metadata is skipped.
    let header =
      "{\"__metadata__\":{\"format\":\"pt\"}," + tensorEntry("dense0.bias", [2], 0, 8) + ","
      + tensorEntry("dense0.weight", [2, 3], 8, 32) + "}  "
    let weights = try SafetensorsReader.weights(
      file(header, f32([10, 20, 1, 2, 3, 4, 5, 6])), layout: layout, source: "w")
    #expect(weights.values == [1, 2, 3, 4, 5, 6, 10, 20])
    #expect(weights.layout == layout)
  }

  @Test func f64F16AndBF16AreConvertedToFloat32() throws {
    var data: [UInt8] = []
    for v in [0.5, -1.25, 3.0, 1e-3, 2.0, -0.0] as [Double] {
      withUnsafeBytes(of: v.bitPattern.littleEndian) { data.append(contentsOf: $0) }
    }
    // F16: 1.0 = 0x3C00, -2.0 = 0xC000; BF16 would be 1.0 = 0x3F80 (not used here).
    for h: UInt16 in [0x3C00, 0xC000] { withUnsafeBytes(of: h.littleEndian) { data.append(contentsOf: $0) } }
    let header =
      "{" + tensorEntry("dense0.weight", [2, 3], 0, 48, dtype: "F64") + ","
      + tensorEntry("dense0.bias", [2], 48, 52, dtype: "F16")
      + "}"
    let w = try SafetensorsReader.weights(file(header, data), layout: layout, source: "w")
    #expect(w.values == [0.5, -1.25, 3, Float(1e-3), 2, -0.0, 1, -2])

    var bf: [UInt8] = []
    for v: Float in [1, 2, 3, 4, 5, 6, -1, 0.5] {
      withUnsafeBytes(of: UInt16(v.bitPattern >> 16).littleEndian) { bf.append(contentsOf: $0) }
    }
    let bfHeader =
      "{" + tensorEntry("dense0.weight", [2, 3], 0, 12, dtype: "BF16") + ","
      + tensorEntry("dense0.bias", [2], 12, 16, dtype: "BF16")
      + "}"
    let b = try SafetensorsReader.weights(file(bfHeader, bf), layout: layout, source: "w")
    #expect(b.values == [1, 2, 3, 4, 5, 6, -1, 0.5])
  }

  @Test func halfPrecisionConvertsExactly() {
    // 0x0001 is the smallest subnormal 2^-24; 0x7BFF the largest finite half, 65504.
    let w = layoutOfOne(8)
    var data: [UInt8] = []
    for h: UInt16 in [0x0001, 0x7BFF, 0x3555, 0x8000, 0x0400, 0xBC00, 0x3800, 0x4900] {
      withUnsafeBytes(of: h.littleEndian) { data.append(contentsOf: $0) }
    }
    let values = try? SafetensorsReader.weights(
      file("{" + tensorEntry("x", [8], 0, 16, dtype: "F16") + "}", data), layout: w, source: "w"
    ).values
    #expect(values == [0x1p-24, 65504, 0.333251953125, -0.0, 0x1p-14, -1, 0.5, 10])
  }

  private func layoutOfOne(_ n: Int) -> WeightsLayout { WeightsLayout([TensorSpec("x", [n])]) }

  @Test func aBadHeaderIsRefused() {
    let good =
      "{" + tensorEntry("dense0.weight", [2, 3], 0, 24) + "," + tensorEntry("dense0.bias", [2], 24, 32) + "}"
    let data = f32([1, 2, 3, 4, 5, 6, 7, 8])
    // Fewer than 8 bytes.
    #expect(refusal(Data([1, 2, 3]))?.message.contains("fewer than the 8-byte header length") == true)
    // A header length beyond the file.
    var long = file(good, data)
    long.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64(1 << 40).littleEndian) { Data($0) })
    #expect(refusal(long)?.message.contains("header length") == true)
    var huge = file(good, data)
    huge.replaceSubrange(0..<8, with: withUnsafeBytes(of: UInt64.max.littleEndian) { Data($0) })
    #expect(refusal(huge)?.code == .invalidData)
    // Not JSON, not an object, a tensor without offsets, a negative dimension.
    #expect(refusal(file("{\"dense0.weight\": ", data))?.message.contains("not the JSON") == true)
    #expect(refusal(file("[1, 2, 3]  ", data))?.message.contains("does not start with a JSON object") == true)
    #expect(refusal(file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", data))?.code == .invalidData)
    #expect(
      refusal(file("{" + tensorEntry("a", [-2], 0, 0) + "}", []))?.message.contains("too large or negative")
        == true
    )
    // A shape whose element count overflows.
    let overflow = "{" + tensorEntry("a", [1 << 32, 1 << 32], 0, 8) + "}"
    #expect(refusal(file(overflow, f32([1, 2])))?.message.contains("too large or negative") == true)
    // A dtype Cohort does not read.
    let ints = "{" + tensorEntry("dense0.weight", [2, 3], 0, 48, dtype: "I64") + "}"
    let message = refusal(file(ints, [UInt8](repeating: 0, count: 48)))?.message ?? ""
    #expect(message.contains("dense0.weight") && message.contains("I64"), "\(message)")
  }

  @Test func offsetsOutOfRangeOverlappingOrLeavingGapsAreRefused() {
    let data = f32([1, 2, 3, 4, 5, 6, 7, 8])
    func header(_ w: (Int, Int), _ b: (Int, Int)) -> String {
      "{" + tensorEntry("dense0.weight", [2, 3], w.0, w.1) + "," + tensorEntry("dense0.bias", [2], b.0, b.1)
        + "}"
    }
    // Past the end of the data section.
    let past = refusal(file(header((0, 24), (24, 40)), data))?.message ?? ""
    #expect(past.contains("dense0.bias") && past.contains("outside the 32-byte data section"), "\(past)")
    // Begin after end, negative begin.
    #expect(refusal(file(header((24, 0), (24, 32)), data))?.message.contains("outside") == true)
    #expect(refusal(file(header((-8, 16), (24, 32)), data))?.message.contains("outside") == true)
    // A span that does not fit the shape and dtype.
    let size = refusal(file(header((0, 20), (20, 28)), f32([1, 2, 3, 4, 5, 6, 7])))?.message ?? ""
    #expect(size.contains("needs 24 bytes") && size.contains("span 20"), "\(size)")
    // Overlap: the bias reads the weight's last 8 bytes.
    let overlap = refusal(file(header((0, 24), (16, 24)), data))?.message ?? ""
    #expect(overlap.contains("overlaps"), "\(overlap)")
    // A gap, and bytes after the last tensor.
    #expect(
      refusal(file(header((8, 32), (0, 8)), data + f32([9])))?.message.contains("belong to no tensor") == true
    )
    let gap = refusal(file(header((0, 24), (28, 36)), data + f32([9])))?.message ?? ""
    #expect(gap.contains("belong to no tensor"), "\(gap)")
  }

  @Test func tensorsAreCheckedAgainstTheModelByNameAndShape() {
    // Transposed weight: PyTorch's nn.Linear is [out, in].
    let transposed =
      "{" + tensorEntry("dense0.weight", [3, 2], 0, 24) + "," + tensorEntry("dense0.bias", [2], 24, 32) + "}"
    let shape = refusal(file(transposed, f32([1, 2, 3, 4, 5, 6, 7, 8])))
    #expect(shape?.code == .shapeMismatch)
    #expect(shape?.message.contains("tensor \"dense0.weight\" has shape [3, 2], expected [2, 3]") == true)
    // Missing bias, and a tensor the model does not have.
    let other =
      "{" + tensorEntry("dense0.weight", [2, 3], 0, 24) + "," + tensorEntry("fc.bias", [2], 24, 32) + "}"
    let missing = refusal(file(other, f32([1, 2, 3, 4, 5, 6, 7, 8])))?.message ?? ""
    #expect(missing.contains("tensor \"dense0.bias\" is missing (expected shape [2])"), "\(missing)")
    #expect(missing.contains("tensor \"fc.bias\" (shape [2]) is not in the model"), "\(missing)")
  }

  @Test func nonFiniteValuesAreRefused() {
    let header =
      "{" + tensorEntry("dense0.weight", [2, 3], 0, 24) + "," + tensorEntry("dense0.bias", [2], 24, 32) + "}"
    let nan = refusal(file(header, f32([1, 2, 3, 4, .nan, 6, 7, 8])))?.message ?? ""
    #expect(nan.contains("dense0.weight") && nan.contains("non-finite") && nan.contains("index 4"), "\(nan)")
    // An F64 beyond Float32's range becomes infinite.
    var big: [UInt8] = []
    withUnsafeBytes(of: (1e300 as Double).bitPattern.littleEndian) { big.append(contentsOf: $0) }
    let f64 = "{" + tensorEntry("x", [1], 0, 8, dtype: "F64") + "}"
    #expect(refusal(file(f64, big), layout: layoutOfOne(1))?.message.contains("non-finite") == true)
  }

  @Test func aFileLargerThanTheModelCanTakeIsNotRead() throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
      "cohort-safetensors-\(getpid())")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let path = directory.appendingPathComponent("big.safetensors").path
    // 8 + 100 MB + 8 bytes per value is the bound; a sparse file just over it.
    let bound = 8 + SafetensorsReader.maximumHeaderBytes + 8 * layout.count
    _ = FileManager.default.createFile(atPath: path, contents: Data())
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    try handle.truncate(atOffset: UInt64(bound + 1))
    try handle.close()
    #expect(throws: CohortError.self) { try SafetensorsReader.load(path: path, layout: layout) }
    do throws(CohortError) {
      _ = try SafetensorsReader.load(path: path, layout: layout)
    } catch { #expect(error.message.contains("more than a model of 8 parameters can take")) }
    let absent = directory.appendingPathComponent("absent.safetensors").path
    #expect(throws: CohortError.self) { try SafetensorsReader.load(path: absent, layout: layout) }
  }
}
