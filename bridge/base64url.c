/*
 * base64url.c
 *	  Strict base64url decoding for JSON Web Tokens.
 */
#include "base64url.h"

#include <stdlib.h>

/* The value of one base64url character, or -1 when it is not one. */
static int
base64url_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/*
 * Decodes unpadded base64url. A lenient decoder would let one signature have
 * many spellings; JWS has exactly one, so anything else is malformed.
 */
bool
base64url_decode(const char *in, size_t inlen, unsigned char **out, size_t *outlen)
{
	unsigned char *buffer;
	size_t length = 0;
	unsigned int bits = 0;
	int nbits = 0;

	*out = NULL;
	*outlen = 0;
	/* One leftover character carries only 6 bits: never a whole byte. */
	if (inlen % 4 == 1)
		return false;
	buffer = malloc(inlen / 4 * 3 + 3);
	if (buffer == NULL)
		return false;
	for (size_t i = 0; i < inlen; i++)
	{
		int value = base64url_value((unsigned char) in[i]);

		if (value < 0)
		{
			free(buffer);
			return false;
		}
		bits = (bits << 6) | (unsigned int) value;
		nbits += 6;
		if (nbits >= 8)
		{
			nbits -= 8;
			buffer[length++] = (unsigned char) (bits >> nbits);
			bits &= (1u << nbits) - 1;
		}
	}
	/* The bits left over after the last whole byte must be zero. */
	if (bits != 0)
	{
		free(buffer);
		return false;
	}
	buffer[length] = '\0';
	*out = buffer;
	*outlen = length;
	return true;
}
