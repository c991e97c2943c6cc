/*
 * fhir_notify.h
 *	  Declarations shared by the files of the fhir_notify extension.
 */
#ifndef FHIR_NOTIFY_H
#define FHIR_NOTIFY_H

#endif /* FHIR_NOTIFY_H */
