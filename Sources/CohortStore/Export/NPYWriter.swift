public import CohortCore
public import Foundation

/// Writes arrays as NumPy `.npy` files, format version 1.0
/// (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html): the magic
/// `\x93NUMPY`, version bytes 1 0, a little-endian uint16 header length, the header dict
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (...), }` padded with spaces and ended
/// by `\n` so the preamble is a multiple of 64 bytes, then the values as little-endian Float32
/// in C (row-major) order. `numpy.load` reads them.
public enum NPYWriter {
  public static func encode(values: [Float], shape: [Int]) throws(CohortError) -> Data {
    guard shape.allSatisfy({ $0 >= 0 }) else {
      throw CohortError(.shapeMismatch, "the shape \(shape) has a negative dimension")
    }
    let count = shape.reduce(1, *)
    guard count == values.count else {
      throw CohortError(
        .shapeMismatch, "the shape \(shape) holds \(count) values but \(values.count) were given",
        fix: "pass values and a shape that agree")
    }
    let dims = shape.map { String($0) }
    let tuple = dims.count == 1 ? "(\(dims[0]),)" : "(" + dims.joined(separator: ", ") + ")"
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': \(tuple), }"
    let preamble = 10  // magic (6), version (2), header length (2)
    let unpadded = preamble + dict.utf8.count + 1  // + "\n"
    let total = (unpadded + 63) / 64 * 64
    let header = dict + String(repeating: " ", count: total - unpadded) + "\n"
    let headerLength = header.utf8.count
    guard headerLength <= Int(UInt16.max) else {
      throw CohortError(
        .shapeMismatch, "the shape \(shape) has too many dimensions for an NPY 1.0 header",
        fix: "reshape the array to fewer dimensions")
    }

    var out = Data([0x93])
    out.append(contentsOf: Array("NUMPY".utf8))
    out.append(contentsOf: [1, 0])
    withUnsafeBytes(of: UInt16(headerLength).littleEndian) { out.append(contentsOf: $0) }
    out.append(contentsOf: Array(header.utf8))
    out.append(Float32LittleEndian.data(values))
    return out
  }

  /// One `.npy` per tensor of `weights`, in layout order, each with the tensor's name and shape.
  public static func encodeTensors(_ weights: Weights) -> [(name: String, npy: Data)] {
    zip(weights.layout.tensors, weights.layout.offsets).map { t, offset in
      let values = Array(weights.values[offset..<(offset + t.count)])
      // The layout guarantees the count matches the shape, and shapes are non-negative.
      return (t.name, try! encode(values: values, shape: t.shape))
    }
  }
}
